//! Build checks and the C shim of the compression engine.
//!
//! 1. libjpeg-turbo's SIMD code for x86 is assembly that only nasm builds.
//!    Without nasm, `mozjpeg-sys` builds the plain C code with a warning
//!    nobody reads, and the engine is several times slower. So on x86 the
//!    build stops here unless nasm works or the user opts out explicitly
//!    with `IMGPROC_ALLOW_NO_SIMD=1`. (`imgproc-local --version` says which
//!    build a binary is.)
//! 2. `src/compress/transupp_shim.c` and `entropy_decoder_shim.c` are compiled
//!    against libjpeg-turbo's own headers, which `mozjpeg-sys` exports
//!    (`DEP_JPEG_INCLUDE`).
//!
//! The fuzz crate builds the engine's sources too and uses this script
//! (`build = "../shared/build.rs"`), so paths are found from either crate.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=IMGPROC_ALLOW_NO_SIMD");
    println!("cargo:rerun-if-env-changed=NASM");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut simd = true;
    if matches!(arch.as_str(), "x86_64" | "x86")
        && let Err(problem) = nasm()
    {
        simd = false;
        if env::var("IMGPROC_ALLOW_NO_SIMD").as_deref() == Ok("1") {
            println!(
                "cargo:warning=building libjpeg-turbo without SIMD ({problem}): JPEG work will be several times slower"
            );
        } else {
            eprintln!(
                "\nerror: {problem}.\n\n\
                 libjpeg-turbo's SIMD code for {arch} is built with nasm; without it the\n\
                 image engine works but is several times slower. Install nasm\n\
                 (Debian/Ubuntu: apt-get install nasm; macOS: brew install nasm), or build\n\
                 without SIMD on purpose with IMGPROC_ALLOW_NO_SIMD=1.\n\n\
                 libjpeg-turbo itself may already have been built without SIMD by this\n\
                 attempt; once nasm is installed, `cargo clean -p mozjpeg-sys` so that\n\
                 it is built again with it.\n"
            );
            std::process::exit(1);
        }
    }

    // What the tests expect `libjpeg::simd_enabled` to say.
    println!("cargo:rustc-env=IMGPROC_SIMD_EXPECTED={}", u8::from(simd));

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let includes = env::var_os("DEP_JPEG_INCLUDE").expect("mozjpeg-sys exports its include path");
    let mut build = cc::Build::new();
    for name in ["transupp_shim.c", "entropy_decoder_shim.c"] {
        let shim = ["src/compress", "../shared/src/compress"]
            .iter()
            .map(|dir| manifest.join(dir).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} next to the engine's sources"));
        println!("cargo:rerun-if-changed={}", shim.display());
        build.file(shim);
    }
    build
        .includes(env::split_paths(&includes))
        // Rust code called from the shims unwinds through them on a libjpeg
        // error, as through libjpeg itself (built with -fexceptions too).
        .flag_if_supported("-fexceptions")
        .warnings(true)
        .compile("imgproc_libjpeg_shims");
}

/// Whether nasm runs and is recent enough for libjpeg-turbo (the same test
/// `mozjpeg-sys` makes).
fn nasm() -> Result<(), String> {
    let nasm = env::var("NASM").unwrap_or_else(|_| "nasm".into());
    match Command::new(&nasm).arg("-v").output() {
        Err(e) => Err(format!("nasm was not found ({nasm}: {e})")),
        Ok(out) if !out.status.success() => Err(format!("`{nasm} -v` failed")),
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout);
            if version.contains("NASM version 0.") {
                Err(format!("nasm is too old ({})", version.trim()))
            } else {
                Ok(())
            }
        }
    }
}
