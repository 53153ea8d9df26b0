//! Fail early, with a hint, when bpf-linker is missing: aya-build would
//! otherwise fail deep inside the nightly cargo invocation.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf")
        && which::which("bpf-linker").is_err()
    {
        panic!("bpf-linker not found on PATH: run `cargo xtask setup`");
    }
}
