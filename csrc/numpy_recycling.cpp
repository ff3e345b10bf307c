// The block-cache NumPy handler (numpy_recycling.h).
#include "numpy_recycling.h"

// PyDataMem_SetHandler is NumPy 1.22's API: built against NumPy 2 headers, the module still
// imports on any NumPy from 1.22.
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#include "block_cache.h"

namespace fastconv {
namespace {

void* handler_malloc(void*, size_t size) { return block_cache::allocate(size); }

void* handler_calloc(void*, size_t nelem, size_t elsize) {
  return block_cache::allocate_zeroed(nelem, elsize);
}

void* handler_realloc(void*, void* p, size_t size) { return block_cache::reallocate(p, size); }

// NumPy passes the size it believes it allocated; the block's header knows the real one.
void handler_free(void*, void* p, size_t) { block_cache::release(p); }

PyDataMem_Handler recycling_handler = {
    "fastconv_block_cache",
    1,
    {nullptr, handler_malloc, handler_calloc, handler_realloc, handler_free},
};

bool numpy_api_loaded() {
  static bool loaded = false;  // read and set under the GIL only
  if (!loaded && _import_array() == 0) loaded = true;
  return loaded;
}

}  // namespace

PyObject* numpy_recycling_handler() {
  if (!numpy_api_loaded()) return nullptr;
  return PyCapsule_New(&recycling_handler, "mem_handler", nullptr);
}

PyObject* numpy_set_handler(PyObject* handler) {
  if (!numpy_api_loaded()) return nullptr;
  return PyDataMem_SetHandler(handler);
}

}  // namespace fastconv
