//! Buffers for artifact blobs, used again instead of allocated per blob.
//!
//! A transfer moves thousands of blobs of 64 KiB to 1 MiB. Allocated one by one, each is a
//! fresh mapping from the allocator: the kernel zeroes and faults in its pages, and unmaps
//! them when quinn or the store drops the blob, so every byte moved cost a page fault and a
//! clearing besides its copies. Here a blob's buffer is taken from a free list of its size
//! class (a power of two) and goes back there when the last [`Bytes`] of it is dropped: on the
//! sender when the peer has acknowledged it, on the receiver when it is stored.
//!
//! At most [`RETAINED`] bytes wait in the free lists; a buffer dropped beyond that is freed.
//! That bounds what an idle node holds after a transfer. Blobs below the smallest class
//! (manifests of small artifacts) and above the largest (manifests of very large ones) are
//! allocated as before: they are few.

use std::sync::Mutex;

use bytes::Bytes;

/// The smallest size class: a chunk's minimum size.
const SMALLEST: usize = 64 << 10;
/// The largest size class: a chunk's maximum size.
const LARGEST: usize = 1 << 20;
const CLASSES: usize = (LARGEST / SMALLEST).trailing_zeros() as usize + 1;
/// Blobs shorter than this are allocated exactly: a class of 64 KiB for a few hundred bytes
/// would only waste memory.
const POOLED_FROM: usize = SMALLEST / 2;
/// Bytes of free buffers kept for the next blobs: what one transfer at full speed has in
/// flight on either side (quinn's unacknowledged data, the requests outstanding).
const RETAINED: usize = 32 << 20;

/// Free buffers by size class, and how many bytes they hold.
pub struct Pool {
    free: Mutex<FreeLists>,
}

struct FreeLists {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

/// The process's pool: blobs received by the driver and read by the artifact store.
pub static POOL: Pool = Pool::new();

impl Pool {
    pub const fn new() -> Pool {
        Pool {
            free: Mutex::new(FreeLists {
                classes: [const { Vec::new() }; CLASSES],
                bytes: 0,
            }),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, FreeLists> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` bytes, from the free list of its class when one waits there. Its
    /// contents are unspecified (zeroes, or a previous blob's bytes): the caller fills all of it.
    pub fn buffer(&'static self, len: usize) -> BlobBuffer {
        let class = class_of(len);
        let reused = class.and_then(|class| {
            let mut free = self.free();
            let buffer = free.classes[class].pop()?;
            free.bytes -= buffer.len();
            Some(buffer)
        });
        let buffer = reused.unwrap_or_else(|| match class {
            Some(class) => vec![0; SMALLEST << class],
            None => vec![0; len],
        });
        BlobBuffer {
            pool: self,
            buffer,
            len,
        }
    }

    /// Bytes waiting in the free lists.
    pub fn retained(&self) -> usize {
        self.free().bytes
    }

    fn give_back(&self, class: usize, buffer: Vec<u8>) {
        let mut free = self.free();
        if free.bytes + buffer.len() <= RETAINED {
            free.bytes += buffer.len();
            free.classes[class].push(buffer);
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("retained", &self.retained())
            .finish()
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// The size class of a blob of `len` bytes, if it is pooled.
fn class_of(len: usize) -> Option<usize> {
    (POOLED_FROM..=LARGEST)
        .contains(&len)
        .then(|| (len.max(SMALLEST).next_power_of_two() / SMALLEST).trailing_zeros() as usize)
}

/// A buffer for one blob of a known length, to be filled and then frozen into [`Bytes`].
pub struct BlobBuffer {
    pool: &'static Pool,
    /// As long as its class (all of it initialized), or exactly the blob for unpooled ones.
    buffer: Vec<u8>,
    len: usize,
}

impl BlobBuffer {
    /// The blob's bytes, to be filled.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.len]
    }

    /// The filled blob; its buffer goes back to its pool when the last clone of the `Bytes`
    /// is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl std::fmt::Debug for BlobBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBuffer")
            .field("len", &self.len)
            .field("capacity", &self.buffer.len())
            .finish()
    }
}

impl AsRef<[u8]> for BlobBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for BlobBuffer {
    fn drop(&mut self) {
        if let Some(class) = class_of(self.len) {
            self.pool.give_back(class, std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    #[test]
    fn each_length_gets_the_smallest_class_that_holds_it() {
        assert_eq!(class_of(POOLED_FROM - 1), None);
        assert_eq!(class_of(POOLED_FROM), Some(0));
        assert_eq!(class_of(SMALLEST), Some(0));
        assert_eq!(class_of(SMALLEST + 1), Some(1));
        assert_eq!(class_of(300 << 10), Some(3));
        assert_eq!(class_of(LARGEST), Some(CLASSES - 1));
        assert_eq!(class_of(LARGEST + 1), None);
    }

    #[test]
    fn a_buffer_comes_back_when_its_last_bytes_are_dropped_and_is_used_again() {
        let pool = pool();
        let len = 300 << 10;
        let mut first = pool.buffer(len);
        first.as_mut_slice().fill(7);
        let address = first.as_ref().as_ptr();
        let bytes = first.freeze();
        let clone = bytes.clone();
        assert_eq!(bytes.len(), len);
        assert!(bytes.iter().all(|&b| b == 7));
        drop(bytes);
        assert_eq!(pool.retained(), 0, "a clone still holds it");
        drop(clone);
        assert_eq!(pool.retained(), 512 << 10);
        let mut again = pool.buffer(len - 1);
        assert_eq!(again.as_mut_slice().len(), len - 1);
        assert_eq!(again.as_ref().as_ptr(), address, "the same buffer again");
        assert_eq!(pool.retained(), 0);
        // Another class does not take it.
        drop(again);
        let other = pool.buffer(100 << 10);
        assert_ne!(other.as_ref().as_ptr(), address);
    }

    #[test]
    fn blobs_outside_the_classes_are_exact_and_not_kept() {
        let pool = pool();
        for len in [0, 100, LARGEST + 1] {
            let mut buffer = pool.buffer(len);
            buffer.as_mut_slice().fill(1);
            let bytes = buffer.freeze();
            assert_eq!(bytes.len(), len);
            drop(bytes);
            assert_eq!(pool.retained(), 0);
        }
    }

    #[test]
    fn the_free_lists_never_hold_more_than_the_bound() {
        let pool = pool();
        let buffers: Vec<Bytes> = (0..(RETAINED / LARGEST) + 8)
            .map(|_| pool.buffer(LARGEST).freeze())
            .collect();
        drop(buffers);
        assert_eq!(pool.retained(), RETAINED);
    }
}
