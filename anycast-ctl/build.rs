//! Builds the eBPF object (crate `anycast-ebpf`) and leaves it in OUT_DIR for `include_bytes`.
//!
//! The object is built with the stable toolchain: its LLVM (22) is the one bpf-linker is linked
//! against (`cargo xtask setup`), so the bitcode always matches the linker, whatever nightly the
//! machine has. `-Z build-std=core` on stable needs RUSTC_BOOTSTRAP, set for that child only.
fn main() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded until aya-build spawns its children.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "anycast-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../anycast-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom("stable"))
}
