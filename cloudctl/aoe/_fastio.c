/*
 * The AoE target's READ/WRITE fast path in C (cloudctl.aoe._fastio).
 *
 * Measured on the 2-core lab machine, the Python path cost ~10-25 us of user time per frame
 * when frames come one at a time (fio's 4 KiB random reads): cache-cold bytecode, and CPU taken
 * from the qemu guest on the same cores. This module does what vblade does for the frames that
 * dominate every workload, with the GIL released: receive, answer an in-range READ from an
 * allowed host with one pread and send; queue an in-range WRITE (a copy of its data and its
 * answer) for the group commit. Every other frame (discovery, errors, anything malformed) is
 * handed back to Python untouched, so responder.py stays the one place that decides AoE.
 * `FastPath.answer` is the same per-frame function without the socket: tests compare its bytes
 * with the Python responder's, frame by frame.
 *
 * Only a READ or WRITE that the Python fast path would answer successfully is taken here (same
 * checks: addressed to us, version 1, no flags, command ATA, a unicast source other than us,
 * the MAC mask and reservation, 0 < count <= max sectors, in range, a WRITE's data all there
 * and its export writable); a short or failed pread falls back too, and Python then sends the
 * error answer.
 *
 * WRITEs keep the target's promise: no answer before the data is on stable storage. The reader
 * queues them and wakes the commit thread (`Waker`, an eventfd); the commit thread calls
 * `take_writes` (pwritev of the queue, adjacent writes merged), fdatasyncs the stores in Python
 * (backing.py decides what a failed fdatasync means), then `finish` sends the answers, as ATA
 * errors for the descriptors whose write or sync failed.
 *
 * This file holds the frame path, the FastPath type and the module; the WRITE queue, the
 * commit side and the Waker are in _fastio_commit.c.
 *
 * Export table: set from Python (`set_exports`) under a mutex that every frame's lookup and
 * pread hold, so once `set_exports` returns no frame uses a descriptor of the previous table:
 * the caller may close those files.
 */
#include "_fastio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void free_exports(export_t *exports, Py_ssize_t n)
{
    if (exports == NULL)
        return;
    for (Py_ssize_t i = 0; i < n; i++)
        free(exports[i].macs);
    free(exports);
}

static int compare_keys(const void *a, const void *b)
{
    uint32_t x = ((const export_t *)a)->key, y = ((const export_t *)b)->key;
    return (x > y) - (x < y);
}

static int listed(const uint8_t *macs, Py_ssize_t n, const uint8_t *mac)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (memcmp(macs + i * MAC_LEN, mac, MAC_LEN) == 0)
            return 1;
    return 0;
}

static const export_t *find_export(const FastPath *self, uint32_t key)
{
    Py_ssize_t low = 0, high = self->nexports - 1;
    while (low <= high) {
        Py_ssize_t mid = low + (high - low) / 2;
        uint32_t at = self->exports[mid].key;
        if (at == key)
            return &self->exports[mid];
        if (at < key)
            low = mid + 1;
        else
            high = mid - 1;
    }
    return NULL;
}

static int pread_full(int fd, uint8_t *buf, size_t length, off_t offset)
{
    size_t done = 0;
    while (done < length) {
        ssize_t n = pread(fd, buf + done, length - done, offset + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        done += (size_t)n;
    }
    return 1;
}

/* The answer to frame[0:n] in out (its length), or 0: Python handles the frame. Holds no lock
 * itself: the caller holds self->lock. `out` must not overlap `frame`. */
static Py_ssize_t answer_frame(FastPath *self, const uint8_t *f, Py_ssize_t n, uint8_t *out,
                               Py_ssize_t capacity)
{
    if (n < ATA_DATA_OFFSET || memcmp(f, self->mac, MAC_LEN) != 0)
        return 0;
    const uint8_t *src = f + MAC_LEN;
    if ((src[0] & 1) || memcmp(src, self->mac, MAC_LEN) == 0)
        return 0;
    /* ethertype 0x88A2, version 1 with no flags, command 0 (ATA) */
    if (f[12] != 0x88 || f[13] != 0xA2 || f[14] != 0x10 || f[19] != 0)
        return 0;
    unsigned count = f[26], command = f[27];
    if (count == 0 || count > self->max_sectors)
        return 0;
    uint64_t low = (uint64_t)f[28] | (uint64_t)f[29] << 8 | (uint64_t)f[30] << 16 |
                   (uint64_t)f[31] << 24;
    uint64_t high = (uint64_t)f[32] | (uint64_t)f[33] << 8;
    uint64_t lba;
    int write = command == ATA_WRITE || command == ATA_WRITE_EXT;
    if (command == ATA_READ_EXT || command == ATA_WRITE_EXT)
        lba = low | high << 32;
    else if (command == ATA_READ || command == ATA_WRITE)
        lba = low & LBA28_MASK;
    else
        return 0;
    const export_t *e = find_export(self, (uint32_t)f[16] << 16 | (uint32_t)f[17] << 8 | f[18]);
    if (e == NULL)
        return 0;
    if (e->nmask && !listed(e->macs, e->nmask, src))
        return 0;
    if (e->nreserve && !listed(e->macs + e->nmask * MAC_LEN, e->nreserve, src))
        return 0;
    if (lba + count > e->sectors)
        return 0;
    size_t length = (size_t)count * SECTOR;
    if (write) {
        if (!e->writable || n < (Py_ssize_t)(ATA_DATA_OFFSET + length) || capacity < MIN_FRAME)
            return 0;
        memset(out, 0, MIN_FRAME);
    } else {
        if ((Py_ssize_t)(ATA_DATA_OFFSET + length) > capacity)
            return 0;
        if (!pread_full(e->fd, out + ATA_DATA_OFFSET, length, (off_t)(lba * SECTOR)))
            return 0;
        overlay_queued(&self->queue, e->fd, lba * SECTOR, length, out + ATA_DATA_OFFSET);
    }
    memcpy(out, src, MAC_LEN);
    memcpy(out + MAC_LEN, e->prefix, PREFIX_LEN);
    memcpy(out + 20, f + 20, 4); /* tag */
    out[24] = f[24];             /* aflags, as the request had them */
    out[25] = 0;                 /* error */
    out[26] = 0;                 /* sector count: 0 once done */
    out[27] = STATUS_DRDY;
    memcpy(out + 28, f + 28, 6); /* LBA as the request had it, device/head bits included */
    out[34] = out[35] = 0;
    if (write) {
        if (!queue_push(&self->queue, e->fd, lba * SECTOR, f + ATA_DATA_OFFSET, length,
                        (uint8_t)count, out))
            return 0;
        return WRITE_QUEUED;
    }
    return (Py_ssize_t)(ATA_DATA_OFFSET + length);
}

/* --- the Python type ------------------------------------------------------------------------ */

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mac", NULL};
    Py_buffer mac;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &mac))
        return -1;
    if (mac.len != MAC_LEN) {
        PyBuffer_Release(&mac);
        PyErr_SetString(PyExc_ValueError, "mac must be 6 bytes");
        return -1;
    }
    memcpy(self->mac, mac.buf, MAC_LEN);
    PyBuffer_Release(&mac);
    return 0; /* no exports (and max_sectors 0) until set_exports: every frame goes to Python */
}

static PyObject *FastPath_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
                              PyObject *Py_UNUSED(kwds))
{
    FastPath *self = (FastPath *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void FastPath_dealloc(FastPath *self)
{
    free_exports(self->exports, self->nexports);
    free_queue(&self->queue);
    Py_CLEAR(self->waker);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One table entry from (shelf, slot, fd, sectors, prefix, mask, reserve, writable); mask and
 * reserve are bytes holding whole 6-byte MACs. */
static int parse_export(PyObject *item, export_t *e)
{
    unsigned shelf, slot;
    int fd, writable;
    unsigned long long sectors;
    Py_buffer prefix, mask, reserve;
    if (!PyArg_ParseTuple(item, "IIiKy*y*y*p", &shelf, &slot, &fd, &sectors, &prefix, &mask,
                          &reserve, &writable))
        return -1;
    int ok = shelf <= 0xFFFF && slot <= 0xFF && fd >= 0 && prefix.len == PREFIX_LEN &&
             mask.len % MAC_LEN == 0 && reserve.len % MAC_LEN == 0;
    if (ok) {
        e->key = shelf << 8 | slot;
        e->fd = fd;
        e->sectors = sectors;
        e->writable = writable;
        memcpy(e->prefix, prefix.buf, PREFIX_LEN);
        e->nmask = mask.len / MAC_LEN;
        e->nreserve = reserve.len / MAC_LEN;
        e->macs = malloc((size_t)(mask.len + reserve.len) + 1);
        if (e->macs == NULL) {
            PyErr_NoMemory();
        } else {
            memcpy(e->macs, mask.buf, (size_t)mask.len);
            memcpy(e->macs + mask.len, reserve.buf, (size_t)reserve.len);
        }
    } else {
        PyErr_SetString(PyExc_ValueError,
                        "an export is (shelf 0..65535, slot 0..255, fd >= 0, sectors, 14-byte "
                        "prefix, mask MACs, reserve MACs, writable)");
    }
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&reserve);
    return ok && e->macs != NULL ? 0 : -1;
}

static PyObject *FastPath_set_exports(FastPath *self, PyObject *args)
{
    unsigned max_sectors;
    PyObject *exports;
    if (!PyArg_ParseTuple(args, "IO", &max_sectors, &exports))
        return NULL;
    if (max_sectors < 1 || max_sectors > 255) {
        PyErr_SetString(PyExc_ValueError, "max_sectors must be 1..255");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(exports, "set_exports takes a sequence of export tuples");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    export_t *table = calloc((size_t)n + 1, sizeof(export_t));
    if (table == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_export(PySequence_Fast_GET_ITEM(seq, i), &table[i]) < 0) {
            free_exports(table, n);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    qsort(table, (size_t)n, sizeof(export_t), compare_keys);
    for (Py_ssize_t i = 1; i < n; i++) {
        if (table[i].key == table[i - 1].key) {
            free_exports(table, n);
            PyErr_SetString(PyExc_ValueError, "two exports at one shelf.slot");
            return NULL;
        }
    }
    export_t *old;
    Py_ssize_t old_n;
    /* The reader holds the lock only around a lookup and a pread, never while it needs the GIL:
     * waiting here with the GIL held cannot deadlock. */
    pthread_mutex_lock(&self->lock);
    old = self->exports;
    old_n = self->nexports;
    self->exports = table;
    self->nexports = n;
    self->max_sectors = max_sectors;
    pthread_mutex_unlock(&self->lock);
    free_exports(old, old_n);
    Py_RETURN_NONE;
}

static PyObject *FastPath_answer(FastPath *self, PyObject *args)
{
    Py_buffer frame, out;
    if (!PyArg_ParseTuple(args, "y*w*", &frame, &out))
        return NULL;
    Py_ssize_t length = 0;
    if (frame.buf == out.buf) {
        PyErr_SetString(PyExc_ValueError, "frame and out must be distinct buffers");
        length = -1;
    } else {
        pthread_mutex_lock(&self->lock);
        length = answer_frame(self, frame.buf, frame.len, out.buf, out.len);
        pthread_mutex_unlock(&self->lock);
        if (length == WRITE_QUEUED)
            length = MIN_FRAME; /* queued; its answer is also in out */
    }
    PyBuffer_Release(&frame);
    PyBuffer_Release(&out);
    if (length < 0)
        return NULL;
    return PyLong_FromSsize_t(length);
}

static PyObject *FastPath_serve(FastPath *self, PyObject *args)
{
    int fd;
    Py_buffer in, out;
    if (!PyArg_ParseTuple(args, "iw*w*", &fd, &in, &out))
        return NULL;
    if (in.buf == out.buf || in.len < ATA_DATA_OFFSET) {
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "serve needs two distinct buffers");
        return NULL;
    }
    Py_ssize_t result = 0;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        ssize_t n = recv(fd, in.buf, (size_t)in.len, 0);
        if (n < 0) {
            /* A receive timeout or a signal: back to Python, which looks at its stop flag. */
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                error = errno;
            break;
        }
        pthread_mutex_lock(&self->lock);
        Py_ssize_t length = answer_frame(self, in.buf, n, out.buf, out.len);
        if (length > 0)
            self->answered++;
        else if (length == WRITE_QUEUED)
            self->writes++;
        else
            self->fallbacks++;
        pthread_mutex_unlock(&self->lock);
        if (length == WRITE_QUEUED) {
            waker_wake(self->waker);
            continue;
        }
        if (length == 0) {
            result = n; /* Python handles the frame in `in` */
            break;
        }
        if (send(fd, out.buf, (size_t)length, 0) < 0)
            self->send_errors++;
        else
            self->sent++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    if (error) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(result);
}

static PyObject *FastPath_counters(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sKsKsKsKsK}", "answered", self->answered, "writes", self->writes,
                         "sent", self->sent, "send_errors", self->send_errors, "fallbacks",
                         self->fallbacks);
}

static PyObject *FastPath_set_waker(FastPath *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &WakerType)) {
        PyErr_SetString(PyExc_TypeError, "set_waker takes a Waker");
        return NULL;
    }
    Py_INCREF(arg);
    Py_XSETREF(self->waker, (Waker *)arg); /* set before the reader starts */
    Py_RETURN_NONE;
}

static PyObject *FastPath_queued(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&self->lock);
    size_t count = self->queue.count;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSize_t(count);
}

static PyMethodDef FastPath_methods[] = {
    {"set_exports", (PyCFunction)FastPath_set_exports, METH_VARARGS,
     "set_exports(max_sectors, exports): replace the most sectors a frame may carry and the "
     "export table; each export is (shelf, slot, fd, sectors, 14-byte answer prefix, mask MACs "
     "as bytes, reserve MACs as bytes, writable: WRITEs queued here). Once it returns, no "
     "frame uses the previous table's descriptors."},
    {"answer", (PyCFunction)FastPath_answer, METH_VARARGS,
     "answer(frame, out) -> int: the fast-path answer to one frame written into out and its "
     "length, or 0 when Python must handle the frame; a WRITE is also queued (its answer "
     "leaves with finish). Counts nothing."},
    {"serve", (PyCFunction)FastPath_serve, METH_VARARGS,
     "serve(fd, buffer, out) -> int: receive on the blocking packet socket fd, with the GIL "
     "released, answering fast-path READs and queueing fast-path WRITEs (waking the Waker), "
     "until a frame needs Python (returns its length; the "
     "frame is in buffer) or the receive times out or is interrupted (returns 0). Other "
     "receive errors raise OSError."},
    {"counters", (PyCFunction)FastPath_counters, METH_NOARGS,
     "counters() -> dict: answered (READs), writes (queued), sent, send_errors, fallbacks "
     "(frames handed to Python)."},
    {"set_waker", (PyCFunction)FastPath_set_waker, METH_O,
     "set_waker(waker): the Waker fired when a WRITE is queued. Call before serving."},
    {"queued", (PyCFunction)FastPath_queued, METH_NOARGS,
     "queued() -> int: WRITEs waiting for take_writes."},
    {"take_writes", (PyCFunction)FastPath_take_writes, METH_NOARGS,
     "take_writes() -> (batch, written, failed): take the queued WRITEs and pwrite them (adjacent "
     "ones merged) with the GIL released; written lists the descriptors written to, failed "
     "those where a write failed. Nothing is durable yet: fdatasync, then finish(batch)."},
    {"finish", (PyCFunction)FastPath_finish, METH_VARARGS,
     "finish(sock_fd, batch, failed) -> int: send the batch's answers on sock_fd, as ATA errors "
     "for the WRITEs to descriptors in failed (write or fdatasync failed); returns how many."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cloudctl.aoe._fastio.FastPath",
    .tp_doc = PyDoc_STR("FastPath(mac): one interface's READ fast path; see set_exports."),
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = FastPath_new,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

static struct PyModuleDef fastio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cloudctl.aoe._fastio",
    .m_doc = PyDoc_STR("The AoE target's READ fast path (see _fastio.c)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastio(void)
{
    if (PyType_Ready(&FastPathType) < 0 || PyType_Ready(&WakerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fastio_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(module, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&WakerType);
    if (PyModule_AddObject(module, "Waker", (PyObject *)&WakerType) < 0) {
        Py_DECREF(&WakerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
