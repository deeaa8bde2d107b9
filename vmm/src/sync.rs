//! Locking that survives a panicked holder.
//!
//! A vCPU thread or device that panics while holding a lock poisons it. The VMM must still stop
//! the VM cleanly (flush the console, remove its sockets, report why it stopped), so every lock
//! in hull-vmm is taken through [`LockExt::locked`], which takes the data as the panicking
//! holder left it instead of propagating the panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that tolerates poisoning.
pub trait LockExt<T: ?Sized> {
    /// Locks, taking the data as it is even if a previous holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 6);
    }
}
