//! Compiles `kernels/` for `nvptx64-nvidia-cuda` into PTX and hands it to the host library
//! (`include_str!` from `OUT_DIR`).
//!
//! Toolchain search, first hit wins:
//! 1. `TILEMUX_KERNEL_CARGO` (and optionally `TILEMUX_KERNEL_RUSTC`, default: `rustc` beside it);
//! 2. a rustup toolchain whose sysroot has `rust-src`;
//! 3. Debian's `rustc-web`/`cargo-web` with `rust-web-src` (`/usr/bin/cargo`, `/usr/bin/rustc`).
//!
//! Without one, the committed `kernels/tilemux.ptx` is embedded and cargo prints one warning.
//! With one, the fresh PTX is compared with the committed copy: `TILEMUX_PTX=update` rewrites
//! the copy, `TILEMUX_PTX=check` fails the build when they differ (CI), and otherwise a stale copy
//! only earns a warning. `TILEMUX_SM` picks the target (default `sm_80`: JIT-compiles on Ampere,
//! Hopper and newer); `TILEMUX_PTX_ISA` a PTX ISA feature such as `ptx80`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMMITTED: &str = "kernels/tilemux.ptx";
const DEFAULT_SM: &str = "sm_80";
const INSTALL_HINT: &str = "apt-get install -y rustc-web cargo-web rust-web-src (Debian), or a rustup toolchain with \
     rust-src, or set TILEMUX_KERNEL_CARGO";

struct Toolchain {
    cargo: PathBuf,
    rustc: PathBuf,
    origin: String,
}

fn main() {
    for p in ["kernels/src", "kernels/Cargo.toml", COMMITTED, "Cargo.lock"] {
        println!("cargo:rerun-if-changed={p}");
    }
    for v in ["TILEMUX_KERNEL_CARGO", "TILEMUX_KERNEL_RUSTC", "TILEMUX_SM", "TILEMUX_PTX_ISA", "TILEMUX_PTX"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let out = out_dir.join("tilemux.ptx");
    let sm = env::var("TILEMUX_SM").unwrap_or_else(|_| DEFAULT_SM.to_string());
    let isa = env::var("TILEMUX_PTX_ISA").ok();
    let mode = env::var("TILEMUX_PTX").unwrap_or_default();
    let committed_path = root.join(COMMITTED);
    let committed = fs::read_to_string(&committed_path).ok();

    let source = match find_toolchain() {
        Some(tc) => {
            let ptx = compile(&tc, &root, &out_dir, &sm, isa.as_deref()).unwrap_or_else(|e| panic!("{e}"));
            check_ptx(&ptx).unwrap_or_else(|e| panic!("kernels/: {e}"));
            let is_default_target = sm == DEFAULT_SM && isa.is_none();
            if is_default_target && committed.as_deref() != Some(ptx.as_str()) {
                match mode.as_str() {
                    "update" => fs::write(&committed_path, &ptx).expect("writing kernels/tilemux.ptx"),
                    "check" => panic!(
                        "{COMMITTED} is stale: it differs from the PTX that {} builds from kernels/. \
                         Rebuild it with `TILEMUX_PTX=update cargo build` and commit it.",
                        tc.origin
                    ),
                    _ => println!(
                        "cargo:warning={COMMITTED} is stale (kernels/ changed); refresh it with \
                         `TILEMUX_PTX=update cargo build`"
                    ),
                }
            }
            fs::write(&out, &ptx).unwrap();
            format!("built by {}", tc.origin)
        }
        None => {
            if mode == "check" {
                panic!("TILEMUX_PTX=check needs a kernel toolchain: {INSTALL_HINT}");
            }
            let ptx = committed.unwrap_or_else(|| panic!("no kernel toolchain and no {COMMITTED}: {INSTALL_HINT}"));
            println!(
                "cargo:warning=no nvptx kernel toolchain found; embedding the committed {COMMITTED}. \
                 To rebuild kernels: {INSTALL_HINT}"
            );
            fs::write(&out, ptx).unwrap();
            "committed kernels/tilemux.ptx".to_string()
        }
    };
    println!("cargo:rustc-env=TILEMUX_PTX_SOURCE={source}");
    println!("cargo:rustc-env=TILEMUX_PTX_TARGET={sm}");
}

/// Runs `cmd` and returns its trimmed stdout if it succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A toolchain can build the kernels if its rustc knows the target and its sysroot has `core`'s
/// source (for `-Zbuild-std=core`).
fn usable(cargo: PathBuf, rustc: PathBuf, origin: String) -> Option<Toolchain> {
    if !cargo.is_file() || !rustc.is_file() {
        return None;
    }
    let sysroot = output(Command::new(&rustc).args(["--print", "sysroot"]))?;
    let core_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    let targets = output(Command::new(&rustc).args(["--print", "target-list"]))?;
    (core_src.is_file() && targets.lines().any(|t| t == "nvptx64-nvidia-cuda")).then_some(Toolchain {
        cargo,
        rustc,
        origin,
    })
}

fn find_toolchain() -> Option<Toolchain> {
    if let Ok(cargo) = env::var("TILEMUX_KERNEL_CARGO") {
        let cargo = PathBuf::from(cargo);
        let rustc =
            env::var("TILEMUX_KERNEL_RUSTC").map(PathBuf::from).unwrap_or_else(|_| cargo.with_file_name("rustc"));
        let found = usable(cargo.clone(), rustc, format!("TILEMUX_KERNEL_CARGO={}", cargo.display()));
        if found.is_none() {
            println!("cargo:warning=TILEMUX_KERNEL_CARGO={} cannot build nvptx kernels", cargo.display());
        }
        return found;
    }
    if let Some(list) = output(Command::new("rustup").args(["toolchain", "list"])) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(sysroot) = output(Command::new("rustup").args(["run", name, "rustc", "--print", "sysroot"]))
            else {
                continue;
            };
            let bin = Path::new(&sysroot).join("bin");
            if let Some(tc) = usable(bin.join("cargo"), bin.join("rustc"), format!("rustup toolchain {name}")) {
                return Some(tc);
            }
        }
    }
    usable(PathBuf::from("/usr/bin/cargo"), PathBuf::from("/usr/bin/rustc"), "Debian rustc-web".to_string())
}

/// The outer cargo's target directory (the ancestor of `OUT_DIR` holding `CACHEDIR.TAG`), so that
/// every profile shares one kernel build; `OUT_DIR` itself when there is none.
fn kernel_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(|d| d.join("tilemux-kernels"))
        .unwrap_or_else(|| out_dir.join("tilemux-kernels"))
}

fn compile(tc: &Toolchain, root: &Path, out_dir: &Path, sm: &str, isa: Option<&str>) -> Result<String, String> {
    let ptx = out_dir.join("tilemux.fresh.ptx");
    let mut rustflags = format!("-C target-cpu={sm}");
    if let Some(isa) = isa {
        rustflags += &format!(" -C target-feature=+{isa}");
    }
    let mut cmd = Command::new(&tc.cargo);
    // The outer cargo's variables (RUSTC, RUSTFLAGS, CARGO_TARGET_DIR, CARGO_ENCODED_RUSTFLAGS,
    // RUSTUP_TOOLCHAIN, ...) would point the inner build at the host toolchain and target.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if (k.starts_with("CARGO") || k.starts_with("RUST")) && k != "CARGO_HOME" && k != "RUSTUP_HOME" {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUSTC", &tc.rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", rustflags)
        .current_dir(root)
        .args(["rustc", "--release", "--quiet", "-p", "tilemux-kernels"])
        .args(["--target", "nvptx64-nvidia-cuda", "-Zbuild-std=core", "--target-dir"])
        .arg(kernel_target_dir(out_dir))
        .arg("--")
        .arg(format!("--emit=asm={}", ptx.display()))
        // One codegen unit: one PTX file. No debug info: stable, small PTX. The unroll threshold
        // makes LLVM fully unroll the register-blocked loops, keeping accumulator arrays in
        // registers (check_ptx rejects local memory). No jump tables: with this toolchain a
        // `match` lowered to `brx.idx` made the resident kernel compute wrong SGEMM results on
        // an H100 (deterministically; the same match as a compare chain is correct), so
        // switches stay compare chains (check_ptx rejects `brx.idx`).
        .args(["-C", "codegen-units=1", "-C", "debuginfo=0"])
        .args(["-C", "llvm-args=-unroll-threshold=8000", "-C", "llvm-args=-min-jump-table-entries=1000"]);
    let out = cmd.output().map_err(|e| format!("running {}: {e}", tc.cargo.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building kernels/ for nvptx64 with {} failed:\n{}",
            tc.origin,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::read_to_string(&ptx).map_err(|e| format!("reading {}: {e}", ptx.display()))
}

/// Rejects PTX the driver could not link or that would run slowly by construction.
fn check_ptx(ptx: &str) -> Result<(), String> {
    if let Some(l) = ptx.lines().find(|l| l.contains(".extern .func")) {
        return Err(format!(
            "the PTX calls a function outside the module (a panic or intrinsic from core?): `{}`",
            l.trim()
        ));
    }
    if ptx.contains("__local_depot") {
        return Err("the PTX uses local memory (`__local_depot`): a register array is indexed at run time \
             or a loop was not unrolled"
            .into());
    }
    if ptx.contains("brx.idx") {
        return Err("the PTX has a jump table (`brx.idx`), which miscompiled the resident kernel: \
             build with -min-jump-table-entries=1000"
            .into());
    }
    if !ptx.contains(".entry tilemux_round") || !ptx.contains("fma.rn.f32") {
        return Err("the PTX lacks the `tilemux_round` entry point or `fma.rn.f32`".into());
    }
    Ok(())
}
