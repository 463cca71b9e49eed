//! The worker's only `unsafe` code: the `fork` a PID namespace needs, with why it is sound.
//! Everything else in the crate is `unsafe`-free (`unsafe_code = "deny"`); the shared-memory
//! and CUDA driver calls are the client crate's (`warden_runtime_client::sys`).
//!
//! [`fork_single_threaded`]: the sandbox needs a `fork`. A new PID namespace only takes
//! effect for the caller's children, so the sandboxed worker must be a child of the process
//! that called `unshare`. Re-executing the binary instead would lose what was opened with
//! the agent's privileges before the drop (the model bytes, checked against their SHA-256;
//! the ONNX Runtime library, already mapped), and would force the library and all its
//! dependencies (libstdc++, libgcc_s, the loader) to be visible inside the sandbox. A fork
//! keeps them in memory and leaves the sandbox's filesystem empty.
#![allow(unsafe_code)]

use nix::unistd::{ForkResult, fork};

/// Which side of the fork this is.
pub enum Side {
    Parent { child: nix::unistd::Pid },
    Child,
}

/// Evidence that the process was single-threaded when its user namespace was created.
pub struct SingleThreaded(());

impl SingleThreaded {
    /// Only `sandbox::namespaces::unshare_all` may build this, right after its
    /// `unshare(CLONE_NEWUSER)` succeeded — which the kernel refuses (`EINVAL`) to a process
    /// with more than one thread.
    pub(crate) fn after_unshare_newuser() -> SingleThreaded {
        SingleThreaded(())
    }
}

/// Forks the process. The caller starts no thread between obtaining `proof` and this call.
pub fn fork_single_threaded(proof: SingleThreaded) -> nix::Result<Side> {
    let SingleThreaded(()) = proof;
    // SAFETY: `fork` in a multi-threaded process may leave locks held by other threads locked
    // forever in the child. Here the process has exactly one thread: `SingleThreaded` is only
    // built after a successful `unshare(CLONE_NEWUSER)`, which the kernel refuses to
    // multi-threaded callers, and the caller spawns no thread between that and this call. The
    // child then runs ordinary Rust code in the same, single-threaded, address space.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Side::Parent { child }),
        ForkResult::Child => Ok(Side::Child),
    }
}
