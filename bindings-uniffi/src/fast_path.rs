//! The cached-read fast path for JNA.
//!
//! Every UniFFI call from Kotlin allocates a JNA `Structure` for its call status, whose
//! native memory JNA registers in a global map and frees on its cleaner thread: ~10 µs per
//! call on this project's machines, whatever the arguments (docs/benchmarks.md). These two
//! plain C functions take and return only integers, so Kotlin binds them with JNA direct
//! mapping and a cached read costs one native call.

use std::sync::Arc;

use crate::manager::NativeTokenManager;

/// [`NativeTokenManager::cached_generation`] through a handle from
/// [`NativeTokenManager::fast_handle`]: 0 when no token can be served without waiting,
/// when `handle` is 0, or if anything inside panics (never unwinds into the caller).
///
/// # Safety
///
/// `handle` is 0 or a handle from `fast_handle` that has not been released yet.
#[no_mangle]
pub unsafe extern "C" fn tokenlease_uniffi_fast_generation(handle: u64) -> u64 {
    let pointer = handle as usize as *const NativeTokenManager;
    // SAFETY: the caller guarantees a live handle (a strong reference we handed out) or 0,
    // which `as_ref` turns into `None`.
    let Some(manager) = (unsafe { pointer.as_ref() }) else {
        return 0;
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.cached_generation()))
        .unwrap_or(0)
}

/// Gives back a handle from [`NativeTokenManager::fast_handle`]; 0 is ignored. Dropping the
/// last reference closes the manager.
///
/// # Safety
///
/// `handle` is 0 or a handle from `fast_handle`, released at most once and not used after.
#[no_mangle]
pub unsafe extern "C" fn tokenlease_uniffi_fast_release(handle: u64) {
    if handle == 0 {
        return;
    }
    let pointer = handle as usize as *const NativeTokenManager;
    // SAFETY: the caller gives back the strong reference `fast_handle` leaked, once.
    let manager = unsafe { Arc::from_raw(pointer) };
    // Closing runs listeners and drops foreign objects; a panic there must not unwind
    // across the C boundary.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(manager)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::CountingSource;

    #[test]
    fn fast_handle_reads_the_cached_generation_and_keeps_the_manager_alive() {
        let manager = NativeTokenManager::with_source(CountingSource::new(false), None, None);
        assert_eq!(manager.cached_generation(), 0);
        let handle = manager.clone().fast_handle();
        assert_ne!(handle, 0);
        // SAFETY: a live handle from fast_handle.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(handle) }, 0);
        let token = manager.token_blocking().unwrap();
        // SAFETY: as above.
        let generation = unsafe { tokenlease_uniffi_fast_generation(handle) };
        assert_eq!(generation, token.generation);
        assert!(manager.invalidate(token.generation));
        // SAFETY: as above.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(handle) }, 0);
        let weak = Arc::downgrade(&manager);
        drop(manager);
        // The handle is a strong reference: the manager is still usable through it.
        assert!(weak.upgrade().is_some_and(|manager| !manager.is_closed()));
        // SAFETY: released once, not used after.
        unsafe { tokenlease_uniffi_fast_release(handle) };
        assert!(weak.upgrade().is_none());
        // SAFETY: 0 is always accepted.
        assert_eq!(unsafe { tokenlease_uniffi_fast_generation(0) }, 0);
        // SAFETY: as above.
        unsafe { tokenlease_uniffi_fast_release(0) };
    }
}
