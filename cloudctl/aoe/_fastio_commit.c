/*
 * The WRITE side of cloudctl.aoe._fastio (see _fastio.c): the queue a reader fills, the commit
 * thread's take_writes (pwritev, adjacent writes merged, under the FastPath's lock) and finish
 * (the answers, as ATA errors where the write or its fdatasync failed), and the Waker that
 * wakes the commit thread.
 */
#include "_fastio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

void free_queue(queue_t *q)
{
    free(q->data);
    free(q->writes);
    memset(q, 0, sizeof(*q));
}

/* Append a WRITE; 0 when memory ran out (the frame then goes to Python). */
int queue_push(queue_t *q, int fd, uint64_t offset, const uint8_t *data, size_t length,
                      uint8_t count, const uint8_t *answer)
{
    if (q->used + length > q->capacity) {
        size_t capacity = q->capacity ? q->capacity : 1 << 16;
        while (q->used + length > capacity)
            capacity *= 2;
        uint8_t *grown = realloc(q->data, capacity);
        if (grown == NULL)
            return 0;
        q->data = grown;
        q->capacity = capacity;
    }
    if (q->count == q->slots) {
        size_t slots = q->slots ? q->slots * 2 : 64;
        write_t *grown = realloc(q->writes, slots * sizeof(write_t));
        if (grown == NULL)
            return 0;
        q->writes = grown;
        q->slots = slots;
    }
    write_t *w = &q->writes[q->count++];
    w->fd = fd;
    w->offset = offset;
    w->length = length;
    w->data_at = q->used;
    w->count = count;
    memcpy(w->answer, answer, MIN_FRAME);
    memcpy(q->data + q->used, data, length);
    q->used += length;
    return 1;
}

void waker_wake(Waker *w)
{
    if (w != NULL && __atomic_exchange_n(&w->armed, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        ssize_t done = write(w->fd, &one, sizeof(one));
        (void)done; /* a full counter (never, at 2**64 - 1) still wakes the reader */
    }
}

/* A READ sees the WRITEs queued before it (the responder's stores do the same): their bytes
 * over what pread found. */
void overlay_queued(const queue_t *q, int fd, uint64_t offset, size_t length, uint8_t *out)
{
    for (size_t i = 0; i < q->count; i++) {
        const write_t *w = &q->writes[i];
        if (w->fd != fd)
            continue;
        uint64_t start = offset > w->offset ? offset : w->offset;
        uint64_t end = offset + length < w->offset + w->length ? offset + length
                                                               : w->offset + w->length;
        if (start < end)
            memcpy(out + (start - offset), q->data + w->data_at + (start - w->offset),
                   (size_t)(end - start));
    }
}

/* --- the group commit's side: take, write out, answer --------------------------------------- */

typedef struct {
    queue_t queue;
} batch_t;

static const char BATCH[] = "cloudctl.aoe._fastio.batch";

static void batch_free(PyObject *capsule)
{
    batch_t *batch = PyCapsule_GetPointer(capsule, BATCH);
    if (batch != NULL) {
        free_queue(&batch->queue);
        free(batch);
    }
}

static int pwrite_all(int fd, const uint8_t *data, size_t length, uint64_t offset)
{
    size_t done = 0;
    while (done < length) {
        ssize_t n = pwrite(fd, data + done, length - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        done += (size_t)n;
    }
    return 1;
}

/* pwritev a run of adjacent writes; a short write finishes piece by piece. */
static int write_run(int fd, struct iovec *iov, int count, uint64_t offset)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += iov[i].iov_len;
    ssize_t n;
    do {
        n = pwritev(fd, iov, count, (off_t)offset);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return 0;
    size_t done = (size_t)n;
    for (int i = 0; i < count && done < total; i++) {
        size_t len = iov[i].iov_len;
        if (done >= len) { /* this piece was written whole */
            done -= len;
            offset += len;
            total -= len;
            continue;
        }
        if (!pwrite_all(fd, (uint8_t *)iov[i].iov_base + done, len - done, offset + done))
            return 0;
        offset += len;
        total -= len;
        done = 0;
    }
    return 1;
}

static int in_list(const int *fds, size_t n, int fd)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] == fd)
            return 1;
    return 0;
}

static PyObject *fd_list(const int *fds, size_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list != NULL && i < n; i++) {
        PyObject *item = PyLong_FromLong(fds[i]);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

PyObject *FastPath_take_writes(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    batch_t *batch = calloc(1, sizeof(batch_t));
    if (batch == NULL)
        return PyErr_NoMemory();
    int *written = NULL, *failed = NULL; /* descriptors written, and those a write failed on */
    size_t nwritten = 0, nfailed = 0;
    Py_BEGIN_ALLOW_THREADS
    /* Under the lock, as the Python stores write out under the I/O lock: a READ waits until
     * every WRITE queued before it is in the file. */
    pthread_mutex_lock(&self->lock);
    queue_t *q = &self->queue;
    written = malloc((q->count + 1) * 2 * sizeof(int)); /* at most one of each per write */
    if (written != NULL) {
        failed = written + q->count + 1;
        struct iovec iov[RUN_IOVECS];
        size_t i = 0;
        while (i < q->count) {
            int fd = q->writes[i].fd, count = 0;
            uint64_t start = q->writes[i].offset, end = start;
            while (i < q->count && q->writes[i].fd == fd && q->writes[i].offset == end &&
                   count < RUN_IOVECS) {
                iov[count].iov_base = q->data + q->writes[i].data_at;
                iov[count].iov_len = q->writes[i].length;
                end += q->writes[i].length;
                count++;
                i++;
            }
            if (!in_list(written, nwritten, fd))
                written[nwritten++] = fd;
            if (!write_run(fd, iov, count, start) && !in_list(failed, nfailed, fd))
                failed[nfailed++] = fd;
        }
        batch->queue = self->queue;
        memset(&self->queue, 0, sizeof(self->queue));
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    if (written == NULL) { /* the queue stays for the next take */
        free(batch);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(batch, BATCH, batch_free);
    if (capsule == NULL) {
        free_queue(&batch->queue); /* written out, never answered: the initiator retransmits */
        free(batch);
        free(written);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(NNN)", capsule, fd_list(written, nwritten),
                                     fd_list(failed, nfailed));
    free(written);
    return result;
}

PyObject *FastPath_finish(FastPath *self, PyObject *args)
{
    int sock;
    PyObject *capsule, *failed_seq;
    if (!PyArg_ParseTuple(args, "iOO", &sock, &capsule, &failed_seq))
        return NULL;
    batch_t *batch = PyCapsule_GetPointer(capsule, BATCH);
    if (batch == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(failed_seq, "failed must be a sequence of descriptors");
    if (seq == NULL)
        return NULL;
    Py_ssize_t nfailed = PySequence_Fast_GET_SIZE(seq);
    int *failed = malloc(((size_t)nfailed + 1) * sizeof(int));
    if (failed == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < nfailed; i++) {
        failed[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (failed[i] == -1 && PyErr_Occurred()) {
            free(failed);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    queue_t *q = &batch->queue;
    unsigned long long sent = 0, errors = 0;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < q->count; i++) {
        write_t *w = &q->writes[i];
        if (in_list(failed, (size_t)nfailed, w->fd)) {
            /* Not known durable: an ATA error, as the responder answers a failed write. */
            w->answer[25] = ERROR_ABRT;
            w->answer[26] = w->count;
            w->answer[27] = STATUS_DRDY | STATUS_ERR;
        }
        if (send(sock, w->answer, MIN_FRAME, 0) < 0)
            errors++;
        else
            sent++;
    }
    Py_END_ALLOW_THREADS
    free(failed);
    size_t count = q->count;
    free_queue(q); /* answered: a second finish sends nothing */
    pthread_mutex_lock(&self->lock);
    self->sent += sent;
    self->send_errors += errors;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSize_t(count);
}

static PyObject *Waker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Waker() takes no arguments");
        return NULL;
    }
    Waker *self = (Waker *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = eventfd(0, EFD_CLOEXEC);
    if (self->fd < 0) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

static void Waker_dealloc(Waker *self)
{
    if (self->fd >= 0)
        close(self->fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Waker_arm(Waker *self, PyObject *Py_UNUSED(ignored))
{
    __atomic_store_n(&self->armed, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *Waker_wake(Waker *self, PyObject *Py_UNUSED(ignored))
{
    waker_wake(self);
    Py_RETURN_NONE;
}

static PyObject *Waker_wait(Waker *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t value;
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    do {
        n = read(self->fd, &value, sizeof(value));
    } while (n < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef Waker_methods[] = {
    {"arm", (PyCFunction)Waker_arm, METH_NOARGS,
     "arm(): the next wake() (or queued WRITE) fires; call before looking for work."},
    {"wake", (PyCFunction)Waker_wake, METH_NOARGS, "wake(): fire if armed (and disarm)."},
    {"wait", (PyCFunction)Waker_wait, METH_NOARGS,
     "wait(): block, with the GIL released, until fired (at once if fired since the last wait)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject WakerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cloudctl.aoe._fastio.Waker",
    .tp_doc = PyDoc_STR("Waker(): wakes the commit thread (an eventfd and an armed flag)."),
    .tp_basicsize = sizeof(Waker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Waker_new,
    .tp_dealloc = (destructor)Waker_dealloc,
    .tp_methods = Waker_methods,
};
