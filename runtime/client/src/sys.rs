//! The client crate's only `unsafe` code: the calls that have no safe wrapper. Each block says
//! why it is sound. Everything else in the crate is `unsafe`-free (`unsafe_code = "deny"`).
//!
//! - [`cuda_driver_present`], [`cuda_driver_version`]: cudarc's dynamic loader panics when
//!   `libcuda` is missing, so its presence is checked first; both calls are `unsafe fn` in
//!   cudarc only because they are raw FFI.
//! - [`own_received_fd`], [`copy_to_shared`], [`copy_from_shared`], [`shared_view`]: the
//!   tensor arena shared with a worker (`crate::shm`): a descriptor received over the socket,
//!   and bounds-checked copies into and out of (agent side) or views of (worker side) a
//!   mapping another process also writes.
#![allow(unsafe_code)]

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
#[cfg(feature = "accel-dynamic-loading")]
pub fn cuda_driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the driver's library names and drops
    // the handle; it dereferences nothing of ours. Loading runs the library's initialisers,
    // which is what any CUDA user does.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Without `accel-dynamic-loading` the driver library is linked: the process would not have
/// started without it.
#[cfg(not(feature = "accel-dynamic-loading"))]
pub fn cuda_driver_present() -> bool {
    true
}

/// The CUDA driver's version (e.g. 12080 for 12.8). Call only after `cuda_driver_present`.
pub fn cuda_driver_version() -> Option<i32> {
    let mut version: std::ffi::c_int = 0;
    // SAFETY: `cuDriverGetVersion` writes one int through the pointer, which points at a live
    // local; the driver library is present (checked by the caller, else cudarc's loader would
    // panic rather than touch memory).
    let result = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (result == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(version)
}

/// Takes ownership of a descriptor the kernel installed in this process for an `SCM_RIGHTS`
/// message (the tensor arena's memfd, received once at start-up).
pub fn own_received_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `recvmsg` just created this descriptor in our table for the message we read;
    // nothing else in the process knows its number, so it is owned here and closed exactly
    // once, when the `OwnedFd` drops.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Whether `offset..offset + len` lies inside `map`.
fn in_bounds(map: &memmap2::MmapRaw, offset: usize, len: usize) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= map.len())
}

/// Copies `data` into the shared mapping at `offset`; `false` (nothing written) when it does
/// not fit.
pub fn copy_to_shared(map: &memmap2::MmapRaw, offset: usize, data: &[u8]) -> bool {
    if !in_bounds(map, offset, data.len()) {
        return false;
    }
    // SAFETY: the destination range lies inside the live mapping (checked above; the mapping
    // cannot shrink under us: the memfd is sealed against shrinking). No Rust reference to
    // the mapping exists on this side of the arena: it is only ever touched through raw byte
    // copies, so the other process writing the same bytes at the same time can garble what
    // lands there but cannot invalidate a reference. `data` is ordinary memory of ours and
    // cannot overlap the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_mut_ptr().add(offset), data.len());
    }
    true
}

/// Copies `len` bytes of the shared mapping from `offset` into a fresh buffer; `None` when the
/// range is outside the mapping. The bytes are whatever the mapping held during the copy: the
/// caller treats them as untrusted input, like any other byte from the worker.
pub fn copy_from_shared(map: &memmap2::MmapRaw, offset: usize, len: usize) -> Option<Vec<u8>> {
    if !in_bounds(map, offset, len) {
        return None;
    }
    let mut out = vec![0u8; len];
    // SAFETY: the source range lies inside the live, shrink-sealed mapping (checked above)
    // and is read only through this raw copy, never through a reference; `out` is a fresh
    // buffer of exactly `len` bytes that cannot overlap the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(map.as_ptr().add(offset), out.as_mut_ptr(), len);
    }
    Some(out)
}

/// A shared view of `len` bytes of the mapping at `offset` (the worker side, for its request
/// inputs); `None` when the range is outside the mapping.
///
/// The protocol is what makes the view sound: the agent writes a request's inputs before it
/// sends the request, and does not touch or reuse that range until it has the worker's answer
/// to that request. The worker drops every view of a request before it answers it.
pub fn shared_view(map: &memmap2::MmapRaw, offset: usize, len: usize) -> Option<&[u8]> {
    if !in_bounds(map, offset, len) {
        return None;
    }
    // SAFETY: the range lies inside the mapping, which lives as long as `map` (the returned
    // slice borrows it) and cannot shrink (sealed memfd). The bytes do not change while the
    // view exists: see the protocol rule above, which the agent follows and `server.rs`
    // keeps on this side.
    Some(unsafe { std::slice::from_raw_parts(map.as_ptr().add(offset), len) })
}
