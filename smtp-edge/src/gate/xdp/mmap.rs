//! A memory-mapped view of a `BPF_F_MMAPABLE` array map of `u32` or `u8` values.
//!
//! Slots are read and written with atomic loads and release stores, so the XDP
//! program (reading concurrently on other CPUs) sees either the old or the new
//! value of a slot, and a block written before its parent pointer is complete
//! when the pointer becomes visible.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use smtp_edge_common::ARRAY_STRIDE;

/// Errors mapping an array.
#[derive(Debug, thiserror::Error)]
pub enum MmapError {
    /// mmap(2) failed (often: the pinned map was created without BPF_F_MMAPABLE).
    #[error("cannot map {name} into memory: {source}")]
    Map {
        /// Map name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The mapped memory of one array map.
#[derive(Debug)]
pub struct MmapArray {
    ptr: *mut u8,
    bytes: usize,
    len: u32,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for MmapArray {}
// SAFETY: as above.
unsafe impl Sync for MmapArray {}

impl MmapArray {
    /// Maps `len` elements of the array behind `fd`.
    pub fn new(fd: impl AsFd, len: u32, writable: bool, name: &str) -> Result<Self, MmapError> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len as usize * ARRAY_STRIDE).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a BPF array map fd; the kernel checks
        // the length against the map's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MmapError::Map {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: ptr.cast(),
            bytes,
            len,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, index: u32) -> Option<*mut u8> {
        // SAFETY: index < len, so the element lies inside the mapping.
        (index < self.len).then(|| unsafe { self.ptr.add(index as usize * ARRAY_STRIDE) })
    }

    /// Reads a `u32` element.
    pub fn get_u32(&self, index: u32) -> Option<u32> {
        // SAFETY: in bounds and 8-byte aligned (page-aligned base, stride 8).
        self.at(index)
            .map(|p| unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::Acquire))
    }

    /// Writes a `u32` element (release store). The mapping must be writable.
    pub fn set_u32(&self, index: u32, value: u32) -> bool {
        match self.at(index) {
            Some(p) => {
                // SAFETY: as in get_u32; the mapping was created writable by the caller.
                unsafe { AtomicU32::from_ptr(p.cast()) }.store(value, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Reads a `u8` element.
    pub fn get_u8(&self, index: u32) -> Option<u8> {
        // SAFETY: in bounds.
        self.at(index)
            .map(|p| unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Acquire))
    }

    /// Writes a `u8` element.
    pub fn set_u8(&self, index: u32, value: u8) -> bool {
        match self.at(index) {
            Some(p) => {
                // SAFETY: in bounds, writable mapping.
                unsafe { AtomicU8::from_ptr(p) }.store(value, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}
