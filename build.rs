//! Links the extension against the libtorch that ships inside the `torch` wheel and compiles
//! the small C++ shim for the ATen ops that tch does not expose.
use std::env;
use std::path::PathBuf;

fn main() {
    let lib = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib.parent().expect("torch lib dir has a parent").join("include");

    println!("cargo:rerun-if-changed=src/shim/ops.cpp");
    println!("cargo:rerun-if-changed=src/shim/batch_norm.cpp");
    println!("cargo:rerun-if-changed=src/shim/winograd.cpp");
    cc::Build::new()
        .cpp(true)
        .file("src/shim/ops.cpp")
        .file("src/shim/batch_norm.cpp")
        .file("src/shim/winograd.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        // batch_norm.cpp's forward and backward must round the pre-activation identically.
        .flag("-ffp-contract=off")
        // at::parallel_for is header code that runs serially unless OpenMP is on; it then uses
        // torch's own libgomp (linked below), so there is one OpenMP runtime and thread pool.
        .flag("-fopenmp")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("byol_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for name in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");

    // The extension sits beside `torch/` in site-packages: find its libraries relative to itself.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-cdylib-link-arg=-ltorch");
    // `cargo test` binaries run from target/: point them at the venv's torch. Wheels
    // (built with the `python` feature) carry only the relative rpath above.
    if env::var_os("CARGO_FEATURE_PYTHON").is_none() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
