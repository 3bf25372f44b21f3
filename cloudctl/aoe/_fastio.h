/*
 * cloudctl.aoe._fastio's shared declarations: _fastio.c (the frame path and the module) and
 * _fastio_commit.c (the WRITE queue, the group commit's side, the Waker).
 */
#ifndef CLOUDCTL_FASTIO_H
#define CLOUDCTL_FASTIO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#define MAC_LEN 6
#define ATA_DATA_OFFSET 36 /* Ethernet 14 + AoE 10 + ATA 12 */
#define PREFIX_LEN 14      /* answer bytes 6..19: our MAC, ethertype, verflags, error, major, minor, command */
#define SECTOR 512
#define ATA_READ 0x20
#define ATA_READ_EXT 0x24
#define ATA_WRITE 0x30
#define ATA_WRITE_EXT 0x34
#define STATUS_DRDY 0x40
#define STATUS_ERR 0x01
#define ERROR_ABRT 0x04
#define LBA28_MASK 0x0FFFFFFFu
#define MIN_FRAME 60
#define WRITE_QUEUED (-1) /* answer_frame: the WRITE and its answer wait in the queue */
#define RUN_IOVECS 256    /* adjacent writes merged into one pwritev, at most */

typedef struct {
    uint32_t key;   /* major << 8 | minor */
    int fd;         /* buffered descriptor of the backing file (owned by Python) */
    uint64_t sectors;
    uint8_t prefix[PREFIX_LEN];
    int writable;   /* WRITEs queued here; else (read-only, O_DIRECT stores) Python's */
    Py_ssize_t nmask, nreserve;
    uint8_t *macs;  /* nmask MACs, then nreserve MACs */
} export_t;

typedef struct {
    int fd;
    uint64_t offset;
    size_t length, data_at; /* the data: queue.data + data_at */
    uint8_t count;          /* the request's sector count, for an error answer */
    uint8_t answer[MIN_FRAME];
} write_t;

typedef struct {
    uint8_t *data;
    size_t used, capacity;
    write_t *writes;
    size_t count, slots;
} queue_t;

/* Wakes the commit thread: armed by it before it looks for work, fired by whoever queues. */
typedef struct {
    PyObject_HEAD
    int fd; /* eventfd */
    int armed;
} Waker;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    uint8_t mac[MAC_LEN];
    unsigned max_sectors;
    export_t *exports; /* sorted by key */
    Py_ssize_t nexports;
    queue_t queue;     /* WRITEs waiting for the commit thread */
    Waker *waker;      /* or NULL: nobody to wake (tests) */
    unsigned long long answered, writes, sent, send_errors, fallbacks;
} FastPath;

/* _fastio_commit.c */
extern PyTypeObject WakerType;
void free_queue(queue_t *q);
int queue_push(queue_t *q, int fd, uint64_t offset, const uint8_t *data, size_t length,
               uint8_t count, const uint8_t *answer);
void overlay_queued(const queue_t *q, int fd, uint64_t offset, size_t length, uint8_t *out);
void waker_wake(Waker *w);
PyObject *FastPath_take_writes(FastPath *self, PyObject *ignored);
PyObject *FastPath_finish(FastPath *self, PyObject *args);

#endif
