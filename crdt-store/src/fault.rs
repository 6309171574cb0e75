//! A storage backend that fails on purpose: the full disks, failing devices and short writes
//! that the store must survive, injected under a real redb database (over a real file or
//! memory) so tests and the simulator exercise the same recovery path production takes.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{BackendError, StorageBackend};

/// A failure the backend injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// Writes, resizes and syncs fail with ENOSPC.
    NoSpace,
    /// Writes, resizes and syncs fail with EIO.
    Io,
    /// A write stores only its first half, then fails with ENOSPC (what a write that runs out of
    /// space mid-way leaves on the device).
    ShortWrite,
}

/// What to inject and when; shared between a test and the backends it made, so faults can be
/// armed and cleared while the store runs.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Option<(InjectedFault, u64)>>,
    injected: AtomicU64,
}

impl FaultPlan {
    /// A plan that injects nothing until armed.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// From the `after`-th mutating operation on (0: the next one), every mutating operation
    /// fails with `fault` until [`FaultPlan::clear`].
    pub fn arm(&self, fault: InjectedFault, after: u64) {
        *self.armed.lock().expect("fault plan lock") = Some((fault, after));
    }

    /// Stops injecting: the disk has space again, the device came back.
    pub fn clear(&self) {
        *self.armed.lock().expect("fault plan lock") = None;
    }

    /// How many operations have failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn next_fault(&self) -> Option<InjectedFault> {
        let mut armed = self.armed.lock().expect("fault plan lock");
        match armed.as_mut() {
            None => None,
            Some((_, after)) if *after > 0 => {
                *after -= 1;
                None
            }
            Some((fault, _)) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Some(*fault)
            }
        }
    }
}

/// Wraps another backend and fails its mutating operations as a [`FaultPlan`] says.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn StorageBackend>,
    plan: Arc<FaultPlan>,
}

impl FaultyBackend {
    /// `inner` carries the bytes; the same `inner` may be wrapped again after the database
    /// over it is dropped, which is how a reopened store finds its data.
    pub fn new(inner: Arc<dyn StorageBackend>, plan: Arc<FaultPlan>) -> FaultyBackend {
        FaultyBackend { inner, plan }
    }

    /// Over memory: a disk that lives as long as the backend (the simulator's).
    pub fn in_memory(plan: Arc<FaultPlan>) -> FaultyBackend {
        FaultyBackend::new(Arc::new(redb::backends::InMemoryBackend::new()), plan)
    }
}

impl InjectedFault {
    /// The name used in scenarios and reports.
    pub fn name(self) -> &'static str {
        match self {
            InjectedFault::NoSpace => "no-space",
            InjectedFault::Io => "io",
            InjectedFault::ShortWrite => "short-write",
        }
    }
}

fn os_error(fault: InjectedFault) -> std::io::Error {
    match fault {
        InjectedFault::NoSpace | InjectedFault::ShortWrite => std::io::Error::from_raw_os_error(28),
        InjectedFault::Io => std::io::Error::from_raw_os_error(5),
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        match self.plan.next_fault() {
            Some(fault) => Err(os_error(fault)),
            None => self.inner.set_len(len),
        }
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        match self.plan.next_fault() {
            Some(fault) => Err(os_error(fault)),
            None => self.inner.sync_data(),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        match self.plan.next_fault() {
            Some(InjectedFault::ShortWrite) => {
                self.inner.write(offset, &data[..data.len() / 2])?;
                Err(os_error(InjectedFault::ShortWrite))
            }
            Some(fault) => Err(os_error(fault)),
            None => self.inner.write(offset, data),
        }
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Passes every operation to a shared backend, so that a database can be dropped and a new
/// one opened over the same bytes.
#[derive(Debug)]
pub(crate) struct SharedBackend(pub(crate) Arc<dyn StorageBackend>);

impl StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
