//! One description of every configuration field: its JSON name, type, default and doc, written
//! once in a `settings!` block. The learner's JSON, the Python keyword arguments and their type
//! checks (`_core.config_schema()`) all come from it.
use crate::error::{value_error, Result};
use serde_json::{json, Map, Value};

/// One field as Python sees it.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: &'static str,
    /// The part of the configuration it belongs to (`network`, `optimizer`, ...).
    pub section: &'static str,
    pub kind: Kind,
    pub default: Value,
    pub doc: String,
}

/// A field's type, in the terms of its JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Int,
    Float,
    Bool,
    Str,
    /// A string from a fixed set (a serde enum).
    Choice(&'static [&'static str]),
    /// `[float, float]`.
    FloatPair,
    /// An augmentation pipeline's own configuration (an object).
    Augment,
    /// The inner kind, or `null`.
    Optional(Box<Kind>),
}

/// The `Kind` of a Rust field type.
pub trait SchemaType {
    fn kind() -> Kind;
}

macro_rules! schema_types {
    ($($ty:ty => $kind:ident),+ $(,)?) => {
        $(impl SchemaType for $ty {
            fn kind() -> Kind {
                Kind::$kind
            }
        })+
    };
}

schema_types! {
    i64 => Int,
    f64 => Float,
    bool => Bool,
    String => Str,
    (f64, f64) => FloatPair,
    crate::augment::config::AugmentConfig => Augment,
}

impl<T: SchemaType> SchemaType for Option<T> {
    fn kind() -> Kind {
        Kind::Optional(Box::new(T::kind()))
    }
}

impl Kind {
    /// What Python is told: `{"type": ..., "optional": ..., "choices": [...]}`.
    fn describe(&self) -> Value {
        let (inner, optional) = match self {
            Kind::Optional(k) => (k.as_ref(), true),
            k => (k, false),
        };
        let name = match inner {
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Bool => "bool",
            Kind::Str | Kind::Choice(_) => "str",
            Kind::FloatPair => "float_pair",
            Kind::Augment => "augment",
            Kind::Optional(_) => unreachable!("Option<Option<_>> is not a config type"),
        };
        let mut d = json!({"type": name, "optional": optional});
        if let Kind::Choice(choices) = inner {
            d["choices"] = json!(choices);
        }
        d
    }

    /// `Ok` when `v` is a value of this kind; otherwise what was expected, for the error.
    fn check(&self, v: &Value) -> std::result::Result<(), String> {
        let ok = match self {
            Kind::Optional(k) => return if v.is_null() { Ok(()) } else { k.check(v) },
            Kind::Int => v.is_i64(),
            Kind::Float => v.is_number(),
            Kind::Bool => v.is_boolean(),
            Kind::Str => v.is_string(),
            Kind::Choice(choices) => {
                return match v.as_str() {
                    Some(s) if choices.contains(&s) => Ok(()),
                    _ => Err(format!("expected {}, got {v}", quoted_list(choices))),
                }
            }
            Kind::FloatPair => v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_number)),
            Kind::Augment => v.is_object(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got {v}", self.describe()["type"].as_str().unwrap_or("?")))
        }
    }
}

/// `'a', 'b' or 'c'`.
pub fn quoted_list(choices: &[&str]) -> String {
    let q: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => q.join(""),
    }
}

/// The schema as JSON: one object per field, in declaration order.
pub fn to_json(fields: &[Field]) -> String {
    let list: Vec<Value> = fields
        .iter()
        .map(|f| {
            let mut d = f.kind.describe();
            d["name"] = json!(f.name);
            d["section"] = json!(f.section);
            d["default"] = f.default.clone();
            d["doc"] = json!(f.doc);
            d
        })
        .collect();
    serde_json::to_string(&list).expect("schema serialises")
}

/// Refuses unknown names and values of the wrong type, naming the field: serde's flattened
/// sections would ignore the first and report the second without the name.
pub fn check_object(fields: &[Field], object: &Map<String, Value>) -> Result<()> {
    for (name, value) in object {
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            return Err(value_error("config", format!("unknown field {name:?}; the fields are {}", known.join(", "))));
        };
        field.kind.check(value).map_err(|msg| value_error(name, msg))?;
    }
    Ok(())
}

/// A string-valued mode: a serde enum whose JSON values are its `choices`.
macro_rules! config_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::config::schema::SchemaType for $name {
            fn kind() -> $crate::config::schema::Kind {
                $crate::config::schema::Kind::Choice(Self::CHOICES)
            }
        }
    };
}
pub(crate) use config_enum;

/// A section of the configuration: a struct whose fields are written once, each with its type,
/// default and doc, and whose `fields(section)` lists them for the schema.
macro_rules! settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[doc = $doc:literal])* $field:ident: $ty:ty = $default:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: $ty),+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default),+ }
            }
        }

        impl $name {
            pub fn fields(section: &'static str) -> Vec<$crate::config::schema::Field> {
                let d = Self::default();
                vec![$($crate::config::schema::Field {
                    name: stringify!($field),
                    section,
                    kind: <$ty as $crate::config::schema::SchemaType>::kind(),
                    default: serde_json::to_value(&d.$field).expect("a default serialises"),
                    doc: { let docs: &[&str] = &[$($doc),*]; docs.iter().map(|d| d.trim()).collect::<Vec<_>>().join(" ") },
                }),+]
            }
        }
    };
}
pub(crate) use settings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_accept_their_values_only() {
        let cases = [
            (Kind::Int, json!(3), true),
            (Kind::Int, json!(3.5), false),
            (Kind::Float, json!(3), true),
            (Kind::Bool, json!(1), false),
            (Kind::FloatPair, json!([0.1, 2]), true),
            (Kind::FloatPair, json!([0.1]), false),
            (Kind::Optional(Box::new(Kind::Int)), json!(null), true),
            (Kind::Int, json!(null), false),
            (Kind::Choice(&["a", "b"]), json!("b"), true),
            (Kind::Choice(&["a", "b"]), json!("c"), false),
        ];
        for (kind, value, ok) in cases {
            assert_eq!(kind.check(&value).is_ok(), ok, "{kind:?} on {value}");
        }
        assert_eq!(quoted_list(&["raise", "skip"]), "'raise' or 'skip'");
        assert_eq!(quoted_list(&["a", "b", "c"]), "'a', 'b' or 'c'");
    }
}
