//! Full training state in one safetensors file: online and target weights, BN statistics,
//! optimizer state, and (in the header's metadata) the config and each policy's counters as JSON.
//! Writes go to a temporary file that is renamed into place, so a crash never leaves a torn file.
use crate::config::LearnerConfig;
use crate::error::{Error, Result};
use crate::train::accumulate::Progress;
use crate::train::guard::GuardState;
use crate::train::scaler::ScalerState;
use crate::train::{Learner, RunState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const FORMAT: &str = "byol_rs.checkpoint.v2";
/// Counters as flat strings (`step`, `micro_step`, `skipped_steps`, `loss_scale`, `good_steps`);
/// still read.
const FORMAT_V1: &str = "byol_rs.checkpoint.v1";

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), msg: msg.into() }
}

/// Every tensor of the training state under its checkpoint key.
fn state_tensors(l: &Learner) -> Vec<(String, Tensor)> {
    let mut out = vec![];
    for (prefix, flat) in [("online.", l.params()), ("online.", l.buffers()), ("target.", l.target_params()), ("target.", l.target_buffers()), ("grad.", l.grads())] {
        out.extend(flat.named().map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone())));
    }
    out.extend(l.optimizer_state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    out
}

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        _ => return None,
    })
}

pub fn save(l: &Learner, path: &Path) -> Result<()> {
    let tensors = state_tensors(l);
    let mut header = Map::new();
    let state = l.run_state();
    // safetensors metadata maps strings to strings: each value is its own JSON text.
    let meta = json!({
        "format": FORMAT,
        "config": l.config().to_json(),
        "progress": to_json(&state.progress),
        "scaler": to_json(&state.scaler),
        "guard": to_json(&state.guard),
        "replan": state.replan.map(|r| to_json(&r)).unwrap_or_default(),
        "augment_rng": state.augment_rng.map(|r| to_json(&r)).unwrap_or_default(),
    });
    header.insert("__metadata__".into(), meta);
    let mut data: Vec<u8> = vec![];
    for (name, t) in &tensors {
        let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dtype = dtype_name(t.kind()).ok_or_else(|| err(path, format!("{name}: unsupported dtype {:?}", t.kind())))?;
        let nbytes = t.numel() * t.kind().elt_size_in_bytes();
        let start = data.len();
        data.resize(start + nbytes, 0);
        t.f_copy_data_u8(&mut data[start..], t.numel())?;
        header.insert(name.clone(), json!({"dtype": dtype, "shape": t.size(), "data_offsets": [start, start + nbytes]}));
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("header serialises");
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&(head.len() as u64).to_le_bytes())?;
        f.write_all(&head)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path, format!("could not write: {e}"))
    })
}

/// Reads the header and raw tensor bytes, checking every offset against the file size.
fn read_file(path: &Path) -> Result<(Map<String, Value>, HashMap<String, Tensor>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("could not read: {e}")))?;
    let foreign = || err(path, "not a byol_rs checkpoint (bad safetensors header)");
    if bytes.get(8) != Some(&b'{') {
        return Err(foreign());
    }
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(foreign)?.try_into().unwrap()) as usize;
    let head = bytes.get(8..8usize.checked_add(n).ok_or_else(foreign)?).ok_or_else(|| err(path, "truncated header"))?;
    let Value::Object(mut header) = serde_json::from_slice(head).map_err(|_| foreign())? else { return Err(foreign()) };
    let meta = match header.remove("__metadata__") {
        Some(Value::Object(m)) if matches!(m.get("format").and_then(Value::as_str), Some(FORMAT | FORMAT_V1)) => m,
        _ => return Err(err(path, format!("not a byol_rs checkpoint (metadata format is not {FORMAT})"))),
    };
    let body = &bytes[8 + n..];
    let mut tensors = HashMap::new();
    for (name, info) in header {
        let bad = || err(path, format!("{name}: malformed tensor entry"));
        let kind = match info["dtype"].as_str() {
            Some("F32") => Kind::Float,
            Some("F64") => Kind::Double,
            Some("I64") => Kind::Int64,
            Some("BF16") => Kind::BFloat16,
            Some("F16") => Kind::Half,
            _ => return Err(bad()),
        };
        let shape: Vec<i64> = serde_json::from_value(info["shape"].clone()).map_err(|_| bad())?;
        let offs: Vec<usize> = serde_json::from_value(info["data_offsets"].clone()).map_err(|_| bad())?;
        let [start, end] = offs[..] else { return Err(bad()) };
        let slice = body.get(start..end).ok_or_else(|| err(path, format!("{name}: truncated file (data ends before the tensor)")))?;
        let numel: i64 = shape.iter().product();
        if slice.len() != numel as usize * kind.elt_size_in_bytes() {
            return Err(bad());
        }
        tensors.insert(name, Tensor::f_from_data_size(slice, &shape, kind)?);
    }
    Ok((meta, tensors))
}

/// Builds a learner from the checkpoint's config and fills in all state; on any error
/// nothing is returned, so no half-loaded learner exists.
pub fn load(path: &Path, device: Option<&str>, dist: Option<crate::distributed::Dist>) -> Result<Learner> {
    let (meta, tensors) = read_file(path)?;
    let mut config = LearnerConfig::from_json(field(&meta, "config", path)?).map_err(|e| err(path, format!("bad config: {e}")))?;
    if let Some(d) = device {
        config.run.device = d.to_string();
    }
    let mut learner = Learner::with_dist(config, dist)?;
    let expected = state_tensors(&learner);
    if expected.len() != tensors.len() {
        return Err(err(path, format!("holds {} tensors, this configuration has {}", tensors.len(), expected.len())));
    }
    let _guard = tch::no_grad_guard();
    for (name, t) in &expected {
        let src = tensors.get(name).ok_or_else(|| err(path, format!("missing tensor {name}")))?;
        if src.size() != t.size() {
            return Err(err(path, format!("{name}: shape {:?}, expected {:?}", src.size(), t.size())));
        }
        t.shallow_clone().f_copy_(src)?;
    }
    let mut state = learner.run_state();
    if meta.get("format").and_then(Value::as_str) == Some(FORMAT_V1) {
        read_v1_counters(&meta, &mut state, path)?;
    } else {
        state.progress = parse(&meta, "progress", path)?;
        state.scaler = parse(&meta, "scaler", path)?;
        state.guard = parse(&meta, "guard", path)?;
    }
    // Absent from checkpoints written before continuous re-plans, and empty when none happened.
    if meta.get("replan").and_then(Value::as_str).is_some_and(|r| !r.is_empty()) {
        state.replan = Some(parse(&meta, "replan", path)?);
    }
    if state.augment_rng.is_some() {
        state.augment_rng = Some(parse(&meta, "augment_rng", path)?);
    }
    learner.restore(state);
    Ok(learner)
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

fn field<'a>(meta: &'a Map<String, Value>, key: &str, path: &Path) -> Result<&'a str> {
    meta.get(key).and_then(Value::as_str).ok_or_else(|| err(path, format!("metadata lacks {key}")))
}

fn parse<T: DeserializeOwned>(meta: &Map<String, Value>, key: &str, path: &Path) -> Result<T> {
    serde_json::from_str(field(meta, key, path)?).map_err(|e| err(path, format!("bad {key}: {e}")))
}

/// The counters as a v1 checkpoint holds them, one number per string.
fn read_v1_counters(meta: &Map<String, Value>, state: &mut RunState, path: &Path) -> Result<()> {
    let counter = |k: &str| -> Result<i64> { field(meta, k, path)?.parse().map_err(|_| err(path, format!("bad {k}"))) };
    state.progress = Progress { step: counter("step")?, micro_step: counter("micro_step")? };
    state.guard = GuardState { skipped_steps: counter("skipped_steps")? };
    // Absent from checkpoints written before fp16 support: keep the fresh learner's values.
    if meta.contains_key("loss_scale") {
        let scale = field(meta, "loss_scale", path)?.parse().map_err(|_| err(path, "bad loss_scale"))?;
        state.scaler = ScalerState { scale, good_steps: counter("good_steps")? };
    }
    Ok(())
}
