cdef int ids_out_of_range(const void* p, Py_ssize_t n, int size, bint signed,
                          Py_ssize_t vocab_size) noexcept nogil
