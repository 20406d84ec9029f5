//! What a panic prints. Bad input, I/O and device problems are errors (`error: ...`, exit 1);
//! a panic means a bug in seli or in a library under it (burn's kernels, cubecl's CUDA backend
//! compiling a kernel with NVRTC). The hook says so on an `error:` line naming the crate and
//! place, and for the GPU backend how to carry on without it, instead of Rust's panic text;
//! the process still exits with 101. With `RUST_BACKTRACE` set, Rust's own report follows.

use std::panic::PanicHookInfo;

/// Installs the hook (once, first thing in `main`).
pub fn install() {
    let rust_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let place = info.location().map(|l| (l.file(), l.line()));
        let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        eprintln!("{}", report(place, &message, backtrace));
        if backtrace {
            rust_report(info);
        }
    }));
}

/// The crate (`name version` for a registry crate) and the file within it, from a panic's
/// source path: a registry path, scripts/build-cuda.sh's patched copy, or one of our crates.
fn locate(file: &str) -> (String, String) {
    let file = file.replace('\\', "/");
    let tail = ["/registry/src/", "/cuda-patch/"].iter().find_map(|marker| {
        let rest = &file[file.find(marker)? + marker.len()..];
        // Registry paths have one more folder (the index) before the crate's.
        Some(if *marker == "/registry/src/" { rest.split_once('/')?.1 } else { rest })
    });
    if let Some((krate, path)) = tail.and_then(|t| t.split_once('/')) {
        // `name-1.2.3`: the version starts after the last '-' followed by a digit.
        let named = krate
            .rmatch_indices('-')
            .find(|(i, _)| krate[i + 1..].starts_with(|c: char| c.is_ascii_digit()))
            .map(|(i, _)| format!("{} {}", &krate[..i], &krate[i + 1..]));
        return (named.unwrap_or_else(|| krate.to_string()), path.to_string());
    }
    match file.strip_prefix("crates/").and_then(|t| t.split_once('/')) {
        Some((krate, path)) => (krate.to_string(), path.to_string()),
        None => (String::new(), file),
    }
}

/// Whether a panic came from the GPU backend: one of its crates, or a message about CUDA.
fn from_gpu_backend(krate: &str, message: &str) -> bool {
    ["cubecl", "burn-cubecl", "burn-cuda", "burn-fusion", "cudarc"]
        .iter()
        .any(|p| krate.starts_with(p))
        || ["CUDA", "NVRTC", "nvrtc", "PTX"].iter().any(|w| message.contains(w))
}

/// The text the hook prints for a panic at `place` (source file, line) with `message`.
fn report(place: Option<(&str, u32)>, message: &str, backtrace: bool) -> String {
    let (krate, at) = match place {
        Some((file, line)) => {
            let (krate, path) = locate(file);
            (krate, format!("{path}:{line}"))
        }
        None => (String::new(), "an unknown place".into()),
    };
    let within = if krate.is_empty() { at } else { format!("{krate} ({at})") };
    let mut text = format!("error: internal failure in {within}: {message}");
    if from_gpu_backend(&krate, message) {
        text.push_str(
            "\n  The GPU backend (burn's CUDA kernels, compiled by NVRTC at run time) failed on \
             this device. The same command with --device cpu runs on the CPU, and \
             --resume DIR --device cpu continues a run from its last checkpoint.",
        );
    }
    text.push_str("\n  This is a bug: please report it with this message");
    text.push_str(if backtrace { "." } else { " (RUST_BACKTRACE=1 adds where it came from)." });
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_name_the_crate_and_place_and_gpu_failures_say_how_to_go_on() {
        let registry = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/\
                        cubecl-cuda-0.11.3/src/compute/server.rs";
        assert_eq!(locate(registry), ("cubecl-cuda 0.11.3".into(), "src/compute/server.rs".into()));
        let patched = "/work/main/target/cuda-patch/cubecl-cuda-0.11.3/src/runtime.rs";
        assert_eq!(locate(patched), ("cubecl-cuda 0.11.3".into(), "src/runtime.rs".into()));
        assert_eq!(
            locate("crates/seli-train/src/run.rs"),
            ("seli-train".into(), "src/run.rs".into())
        );
        assert_eq!(locate("/rustc/abc/library/core/src/option.rs").0, "");

        let gpu = report(Some((registry, 412)), "Kernel to never fail: compilation error", false);
        assert!(
            gpu.starts_with(
                "error: internal failure in cubecl-cuda 0.11.3 (src/compute/server.rs:412): \
                 Kernel to never fail"
            ),
            "{gpu}"
        );
        assert!(gpu.contains("--device cpu") && gpu.contains("RUST_BACKTRACE=1"), "{gpu}");

        let ours = report(Some(("crates/seli-train/src/run.rs", 7)), "index out of bounds", true);
        assert_eq!(
            ours,
            "error: internal failure in seli-train (src/run.rs:7): index out of bounds\n  \
             This is a bug: please report it with this message."
        );
        let cuda = report(None, "CUDA_ERROR_ILLEGAL_ADDRESS", false);
        assert!(cuda.contains("an unknown place") && cuda.contains("--device cpu"), "{cuda}");
    }
}
