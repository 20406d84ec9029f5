//! Where the networks compute: the run layer's [`Device`] (`cpu`, `cuda:N`) turned into a burn
//! device, after checking that what the backend needs is there, so that a missing driver,
//! NVRTC or CUDA headers is a clear error naming the library or path and how to provide it
//! rather than a panic deep inside the backend.
//!
//! `cpu` is burn's flex backend. On `cuda:N` the networks train on seli's engine
//! ([`crate::engine`]: [`check_engine`] checks what it needs) and the UFM on cuBLAS; burn's CUDA
//! backend (cubecl's CUDA C++ kernels, compiled by NVRTC at run time) stays for comparison
//! (`seli bench train --burn`, `seli bench ufm --burn`). All are present only in builds with the
//! `cuda` feature (`scripts/build-cuda.sh`); other builds refuse them with a message saying how
//! to get one.

use crate::error::Result;
pub use seli_run::train::Device;

/// Whether this build has the CUDA backend.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// How to get a build that has the CUDA backend (the text of the refusal).
pub const HOW_TO_GET_CUDA: &str = "this seli was built without the CUDA backend; build one with \
     scripts/build-cuda.sh (cargo's `cuda` feature with a patched cubecl-cuda; README, \"GPU\")";

/// The burn device (without autodiff) for `device`, after checking its requirements.
///
/// # Errors
/// [`Error::Device`](crate::error::Error::Device): CUDA requested from a CPU-only build; no
/// NVIDIA driver (libcuda), no NVRTC, no CUDA headers, or no GPU with that index.
pub fn burn_device(device: Device) -> Result<burn::tensor::Device> {
    match device {
        Device::Cpu => Ok(burn::tensor::Device::flex()),
        Device::Cuda(index) => cuda_device(index),
    }
}

/// Runs `f` where the work on `device` is cheapest to hand out: for the CPU, on a thread of
/// rayon's current pool (the global one unless the caller installed another), the pool burn's
/// flex kernels and gemm split their loops over. Called from outside the pool, each of those
/// kernels would be injected into it and the calling thread put to sleep until the kernel ends:
/// a wake-up and a sleep per tensor operation. From a pool thread the caller takes part and the
/// other threads steal. GPU work stays on the calling thread.
///
/// Called from outside the pool (the CLI's `seli train` and `seli bench train`), the pool's
/// other threads also stay awake while `f` runs, spinning on [`rayon::yield_now`] as OpenMP's
/// threads do under PyTorch: a rayon thread idle for a few tens of microseconds goes to sleep,
/// and waking it takes about as long as half of one of the MLPs' products (on a two-core
/// virtual machine a 128×512×512 product split in two took 190–210 µs with the other thread
/// awake, 260–340 µs after 100–500 µs of one-thread work had let it sleep; `seli bench train`:
/// MLPs +15–25 %, ResNet-18 +10–15 %). Called from a pool thread (a sweep's point), `f` just
/// runs: the pool's threads are the sweep's.
pub fn on_compute_threads<R: Send>(device: Device, f: impl FnOnce() -> R + Send) -> R {
    match device {
        // `scope` runs its body on a pool thread.
        Device::Cpu if rayon::current_thread_index().is_none() => rayon::scope(|_| hot(f)),
        Device::Cpu | Device::Cuda(_) => f(),
    }
}

thread_local! {
    /// Whether this thread is one of [`hot`]'s spinners.
    static SPINNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f()` on this pool thread with every other thread of the pool spinning meanwhile: each of
/// them loops on [`rayon::yield_now`], which runs any job waiting in the pool (a product's
/// other half, a kernel's chunk), until `f` returns or unwinds. The spinners are broadcast, one
/// in each thread's own queue; the one of `f`'s thread, and any that lands on a thread already
/// spinning (a nested call), returns at once, so no thread ever waits on itself.
fn hot<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets the flag when dropped: on return and on unwinding alike.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let home = rayon::current_thread_index();
    let spin = Arc::clone(&stop.0);
    // One job in each thread's own queue: no thread can take another's.
    rayon::spawn_broadcast(move |ctx| {
        if Some(ctx.index()) == home || SPINNING.get() {
            return;
        }
        SPINNING.set(true);
        while !spin.load(Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
        SPINNING.set(false);
    });
    f()
}

/// The refusal of `cuda:index` by a build without CUDA, saying how to get one.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda(index: usize) -> crate::error::Error {
    crate::error::Error::Device(format!("device cuda:{index}: {HOW_TO_GET_CUDA}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> Result<burn::tensor::Device> {
    Err(no_cuda(index))
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<burn::tensor::Device> {
    cuda::preflight(index)?;
    Ok(burn::tensor::Device::cuda(index))
}

/// Checks what the CUDA UFM ([`crate::cuda_ufm`]) needs on `cuda:index`: the driver, the GPU,
/// NVRTC and cuBLAS (cudarc panics when one is missing).
///
/// # Errors
/// [`Error::Device`](crate::error::Error::Device) naming what is missing and how to provide it.
#[cfg(feature = "cuda")]
pub(crate) fn check_cuda_ufm(index: usize) -> Result<()> {
    cuda::preflight_cublas(index)
}

/// Checks that `cuda:index` can run the network engine (`crate::engine`): the driver, the
/// GPU, NVRTC, cuBLAS and cuDNN; in a build without CUDA, the refusal saying how to get one.
///
/// # Errors
/// [`Error::Device`](crate::error::Error::Device) naming what is missing and how to provide it.
pub fn check_engine(index: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    return check_cuda_engine(index);
    #[cfg(not(feature = "cuda"))]
    Err(no_cuda(index))
}

/// Checks that a training run can use `device`: nothing for the CPU; for `cuda:N`,
/// [`check_engine`] (the networks train on seli's engine there, which needs no CUDA headers).
///
/// # Errors
/// [`Error::Device`](crate::error::Error::Device) naming what is missing and how to provide it.
pub fn check_training(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(index) => check_engine(index),
    }
}

/// Checks what the network engine on the GPU ([`crate::engine::cuda`]) needs on `cuda:index`:
/// what the CUDA UFM needs, and cuDNN.
///
/// # Errors
/// [`Error::Device`](crate::error::Error::Device) naming what is missing and how to provide it.
#[cfg(feature = "cuda")]
pub(crate) fn check_cuda_engine(index: usize) -> Result<()> {
    cuda::preflight_cublas(index)?;
    cuda::preflight_cudnn(index)
}

/// The checks behind `cuda:N`: the backend panics (inside cudarc or cubecl) when one of these
/// is missing, so they run first and fail with the remedy.
#[cfg(feature = "cuda")]
mod cuda {
    use std::ffi::{CStr, CString, c_int, c_uint, c_void};
    use std::path::PathBuf;

    use crate::error::{Error, Result};

    /// The shared library loaded from the first of `names` that loads, or the loader's message
    /// for each.
    fn open(names: &[&str]) -> std::result::Result<*mut c_void, String> {
        let mut why = Vec::new();
        for name in names {
            let c = CString::new(*name).expect("no NUL in a library name");
            // SAFETY: dlopen with a valid C string; the handle is kept for the process.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return Ok(handle);
            }
            // SAFETY: dlerror returns null or a C string valid until the next dl* call.
            let err = unsafe { libc::dlerror() };
            let msg = if err.is_null() {
                "not found".to_string()
            } else {
                unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned()
            };
            why.push(msg);
        }
        Err(why.join("; "))
    }

    fn symbol(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: dlsym on a live handle with a valid C string.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// Where cubecl looks for the CUDA headers: `$CUDA_PATH`, else /usr/local/cuda, /opt/cuda,
    /// or /usr when nvcc is in /usr/bin.
    pub(super) fn cuda_root() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CUDA_PATH") {
            return Some(PathBuf::from(p));
        }
        ["/usr/local/cuda", "/opt/cuda"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| std::path::Path::new("/usr/bin/nvcc").exists().then(|| "/usr".into()))
    }

    /// What burn's CUDA backend needs: the driver, a GPU with that index, NVRTC and the CUDA
    /// headers.
    pub(super) fn preflight(index: usize) -> Result<()> {
        driver_and_nvrtc(index)?;
        headers(index)
    }

    /// What the CUDA UFM needs (its kernels include no header): the driver, a GPU with that
    /// index, NVRTC and cuBLAS.
    pub(crate) fn preflight_cublas(index: usize) -> Result<()> {
        driver_and_nvrtc(index)?;
        if let Err(why) = open(&["libcublas.so.13", "libcublas.so"]) {
            return Err(Error::Device(format!(
                "device cuda:{index}: cuBLAS could not be loaded ({why}); install the CUDA 13 \
                 toolkit's libraries (or the nvidia-cublas wheel) and put the directory \
                 holding libcublas.so.13 and libcublasLt.so.13 on LD_LIBRARY_PATH"
            )));
        }
        Ok(())
    }

    /// cuDNN 9 (its main library, which loads its parts from the same directory).
    pub(crate) fn preflight_cudnn(index: usize) -> Result<()> {
        if let Err(why) = open(&["libcudnn.so.9", "libcudnn.so"]) {
            return Err(Error::Device(format!(
                "device cuda:{index}: cuDNN could not be loaded ({why}); install cuDNN 9 for \
                 CUDA 13 (or the nvidia-cudnn-cu13 wheel, which PyTorch's CUDA wheels bring) \
                 and put the directory holding libcudnn.so.9 on LD_LIBRARY_PATH"
            )));
        }
        Ok(())
    }

    fn driver_and_nvrtc(index: usize) -> Result<()> {
        let dev = format!("device cuda:{index}");
        let fail = |what: String| Err(Error::Device(format!("{dev}: {what}")));
        let driver = match open(&["libcuda.so.1", "libcuda.so"]) {
            Ok(h) => h,
            Err(why) => {
                return fail(format!(
                    "the NVIDIA driver library could not be loaded ({why}); install the NVIDIA \
                     driver, or put the directory holding libcuda.so.1 on LD_LIBRARY_PATH"
                ));
            }
        };
        type Init = unsafe extern "C" fn(c_uint) -> c_int;
        type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
        let (Some(init), Some(count)) =
            (symbol(driver, c"cuInit"), symbol(driver, c"cuDeviceGetCount"))
        else {
            return fail("libcuda has no cuInit/cuDeviceGetCount: not an NVIDIA driver".into());
        };
        // SAFETY: the driver API's signatures: CUresult cuInit(unsigned), and
        // CUresult cuDeviceGetCount(int*).
        let (init, count) = unsafe {
            (
                std::mem::transmute::<*mut c_void, Init>(init),
                std::mem::transmute::<*mut c_void, Count>(count),
            )
        };
        let status = unsafe { init(0) };
        if status != 0 {
            return fail(format!(
                "the NVIDIA driver did not initialize (cuInit returned CUDA error {status}; 100 \
                 means no GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES)"
            ));
        }
        let mut n: c_int = 0;
        let status = unsafe { count(&mut n) };
        if status != 0 || index >= n.max(0) as usize {
            return fail(format!("this machine has {n} visible NVIDIA GPU(s)"));
        }
        if let Err(why) = open(&["libnvrtc.so.13", "libnvrtc.so"]) {
            return fail(format!(
                "NVRTC (the CUDA run-time compiler) could not be loaded ({why}); install the \
                 CUDA 13 runtime (the toolkit, or the nvidia-cuda-nvrtc wheel) and put the \
                 directory holding libnvrtc.so.13 and libnvrtc-builtins.so.13.0 on \
                 LD_LIBRARY_PATH"
            ));
        }
        Ok(())
    }

    fn headers(index: usize) -> Result<()> {
        let fail = |what: String| Err(Error::Device(format!("device cuda:{index}: {what}")));
        let Some(root) = cuda_root() else {
            return fail(
                "no CUDA headers: set CUDA_PATH to a directory whose include/ holds \
                 cuda_fp16.h, mma.h and cuda/barrier (the CUDA toolkit, or the \
                 nvidia-cuda-runtime, nvidia-cuda-crt and nvidia-cuda-cccl wheels merged)"
                    .into(),
            );
        };
        let include = root.join("include");
        for header in ["cuda_fp16.h", "mma.h"] {
            if !include.join(header).is_file() {
                return fail(format!(
                    "{} is missing: CUDA_PATH (or /usr/local/cuda) must point to a CUDA \
                     installation with its headers",
                    include.join(header).display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn cpu_work_runs_on_a_pool_thread_and_gpu_work_on_the_callers() {
        // Test threads are not rayon's.
        assert_eq!(rayon::current_thread_index(), None);
        let caller = std::thread::current().id();
        let (index, thread) = on_compute_threads(Device::Cpu, || {
            (rayon::current_thread_index(), std::thread::current().id())
        });
        assert!(index.is_some() && thread != caller);
        // Already on a pool thread: it stays there.
        let (outer, inner) = on_compute_threads(Device::Cpu, || {
            let here = std::thread::current().id();
            (here, on_compute_threads(Device::Cpu, || std::thread::current().id()))
        });
        assert_eq!(outer, inner);
        let (index, thread) = on_compute_threads(Device::Cuda(0), || {
            (rayon::current_thread_index(), std::thread::current().id())
        });
        assert_eq!((index, thread), (None, caller));
        // The kernels of a pool thread see the whole pool.
        let threads = on_compute_threads(Device::Cpu, rayon::current_num_threads);
        assert_eq!(threads, rayon::current_num_threads());
    }

    /// Whether each thread of the current pool is spinning; polled until `want` holds for all
    /// but `home` (never spinning), for at most ten seconds.
    fn spinning_becomes(want: bool, home: Option<usize>) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed().as_secs() < 10 {
            let states = rayon::broadcast(|ctx| (ctx.index(), SPINNING.get()));
            if states.iter().all(|&(i, s)| if Some(i) == home { !s } else { s == want }) {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// The other threads spin while `f` runs and stop when it returns or panics; joins,
    /// nested calls and spinners that land on `f`'s thread neither deadlock nor change results.
    #[test]
    fn the_other_threads_spin_while_cpu_work_runs() {
        fn tree(depth: u32) -> u64 {
            match depth {
                0 => 1,
                _ => {
                    let (a, b) = rayon::join(|| tree(depth - 1), || hot(|| tree(depth - 1)));
                    a + b
                }
            }
        }
        for threads in 1..=4 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let home = rayon::current_thread_index();
                let (up, sum) = hot(|| (spinning_becomes(true, home), tree(10)));
                assert!(up || threads == 1, "{threads} threads: the others never spun");
                assert_eq!(sum, 1 << 10, "{threads} threads");
                assert!(spinning_becomes(false, None), "{threads} threads: spinners left behind");
                let unwound = std::panic::catch_unwind(|| hot(|| panic!("inside")));
                assert!(unwound.is_err());
                assert!(spinning_becomes(false, None), "{threads} threads: left after a panic");
            });
        }
    }

    #[test]
    fn the_cpu_is_always_there_and_cuda_needs_a_cuda_build_or_a_gpu() {
        assert!(burn_device(Device::Cpu).is_ok());
        match burn_device(Device::Cuda(0)) {
            // A CPU-only build says how to get a CUDA one; a CUDA build without a GPU (CI)
            // names what is missing.
            Err(Error::Device(msg)) => {
                assert!(msg.starts_with("device cuda:0: "), "{msg}");
                if !CUDA_BUILD {
                    assert!(msg.contains("scripts/build-cuda.sh"), "{msg}");
                }
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) if CUDA_BUILD => {}
            Ok(_) => panic!("a CPU-only build returned a CUDA device"),
        }
    }
}
