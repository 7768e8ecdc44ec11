"""fdatasync in a thread of its own that never holds the GIL.

The group commit writes a batch from the event loop and hands the fsync to this thread. A Python
thread would have to take the GIL back after every fdatasync, and fight the busy loop thread for
it; this one blocks on an eventfd, syncs and signals another eventfd, all in C. The loop thread
watches the second eventfd and completes the batch.

`sync`, when given, is a Python callable used instead of fdatasync(2) (with the GIL): the queue's
tests inject slow or failing syncs through it.
"""

from libc.errno cimport EINTR, EIO, errno
from libc.stdint cimport uint64_t
from posix.unistd cimport fdatasync, read, write


cdef class DatasyncThread:
    cdef int request_fd
    cdef int done_fd
    cdef volatile int target_fd
    cdef volatile int result
    cdef object sync

    def __init__(self, int request_fd, int done_fd, sync=None):
        """request_fd: a blocking eventfd the thread waits on; done_fd: the eventfd it signals."""
        self.request_fd = request_fd
        self.done_fd = done_fd
        self.target_fd = -1
        self.result = 0
        self.sync = sync

    def run(self):
        """The thread's body: one fdatasync per request, until stop()."""
        if self.sync is not None:
            self._run_python()
            return
        cdef uint64_t value = 0
        cdef int fd
        with nogil:
            while True:
                if read(self.request_fd, &value, 8) != 8:
                    if errno == EINTR:
                        continue
                    break
                fd = self.target_fd
                if fd < 0:
                    break
                if fdatasync(fd) == 0:
                    self.result = 0
                else:
                    self.result = errno
                value = 1
                while write(self.done_fd, &value, 8) != 8 and errno == EINTR:
                    pass

    def _run_python(self):
        import os

        while True:
            os.eventfd_read(self.request_fd)
            fd = self.target_fd
            if fd < 0:
                break
            try:
                self.sync(fd)
                self.result = 0
            except OSError as error:
                self.result = error.errno or EIO
            os.eventfd_write(self.done_fd, 1)

    def request(self, int fd):
        """Ask for fdatasync(fd); done_fd becomes readable when it returned."""
        self.target_fd = fd
        self._signal()

    def stop(self):
        self.target_fd = -1
        self._signal()

    cdef _signal(self):
        cdef uint64_t value = 1
        if write(self.request_fd, &value, 8) != 8:
            raise OSError(errno, "cannot signal the datasync thread")

    @property
    def error(self):
        """0 after a successful sync, else the errno of the last one."""
        return self.result
