//! The few C library functions that the JPEG 2000 decoder (`openjp2`, a pure-Rust translation
//! of OpenJPEG) calls. wasm32-unknown-unknown has no C library, so without these the module
//! would import them from "env" and fail to instantiate. They use Rust's allocator with a
//! size header in front of each block.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc as re_alloc, Layout};

const ALIGN: usize = 16;
const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, ALIGN).ok()
}

unsafe fn finish(base: *mut u8, size: usize) -> *mut u8 {
    if base.is_null() {
        return base;
    }
    // SAFETY: `base` points to at least HEADER + size bytes aligned to 16.
    unsafe {
        (base as *mut usize).write(size);
        base.add(HEADER)
    }
}

/// # Safety
/// C `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut u8 {
    match layout(size) {
        // SAFETY: the layout has a non-zero size.
        Some(l) => unsafe { finish(alloc(l), size) },
        None => std::ptr::null_mut(),
    }
}

/// # Safety
/// C `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size).and_then(|s| layout(s).map(|l| (s, l))) {
        // SAFETY: the layout has a non-zero size.
        Some((s, l)) => unsafe { finish(alloc_zeroed(l), s) },
        None => std::ptr::null_mut(),
    }
}

/// # Safety
/// C `free`: `ptr` is null or came from these functions.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut u8) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` was returned by malloc/calloc/realloc, which put the size HEADER bytes
    // before it.
    unsafe {
        let base = ptr.sub(HEADER);
        let size = (base as *const usize).read();
        if let Some(l) = layout(size) {
            dealloc(base, l);
        }
    }
}

/// # Safety
/// C `realloc`: `ptr` is null or came from these functions.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        // SAFETY: as malloc.
        return unsafe { malloc(size) };
    }
    let Some(new) = layout(size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: as free; the new size is non-zero.
    unsafe {
        let base = ptr.sub(HEADER);
        let old = (base as *const usize).read();
        match layout(old) {
            Some(l) => finish(re_alloc(base, l, new.size()), size),
            None => std::ptr::null_mut(),
        }
    }
}

/// # Safety
/// C `strcpy`: `src` is NUL-terminated and `dst` large enough.
#[no_mangle]
pub unsafe extern "C" fn strcpy(dst: *mut u8, src: *const u8) -> *mut u8 {
    let mut i = 0;
    // SAFETY: the caller guarantees a terminated source and room in the destination.
    unsafe {
        loop {
            let c = *src.add(i);
            *dst.add(i) = c;
            if c == 0 {
                break;
            }
            i += 1;
        }
    }
    dst
}
