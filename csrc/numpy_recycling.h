// A NumPy data-memory handler (NEP 49, NumPy >= 1.22) whose arrays' memory comes from the
// block cache (block_cache.h), so large arrays freed in one training step serve the next one.
// Binding glue: the only file besides bindings.cpp that knows about Python. Every function
// needs the GIL; the handler's own allocate/free calls do not (NumPy may call them without it).
#pragma once

#include <Python.h>

namespace fastconv {

// A new reference to the handler's "mem_handler" capsule (the same handler every call), or
// nullptr with a Python error set (NumPy's C API could not be loaded).
PyObject* numpy_recycling_handler();

// Makes `handler` (a "mem_handler" capsule) NumPy's handler for new arrays in the current
// context (thread / contextvars context); a new reference to the previous one, or nullptr with
// a Python error set.
PyObject* numpy_set_handler(PyObject* handler);

}  // namespace fastconv
