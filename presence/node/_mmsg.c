/* recvmmsg/sendmmsg for presence.node.mmsg: many UDP datagrams per system call.
 *
 * recv_batch(fd, max, bufsize) -> [(data, (host, port)), ...]   ([] when nothing is queued)
 * send_batch(fd, family, items) -> (taken, failed)
 *
 * Both are non-blocking and hold the GIL (the calls never wait). Built by
 * ``python -m busylamp.presence.node.buildext`` (scripts/bootstrap.sh runs it).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAXB 256

static char *rbuf;
static size_t rbuf_size;
static struct mmsghdr rmsg[MAXB], smsg[MAXB];
static struct iovec riov[MAXB], siov[MAXB];
static struct sockaddr_storage rname[MAXB], sname[MAXB];

static PyObject *peer(const struct sockaddr_storage *sa) {
    char host[INET6_ADDRSTRLEN];
    int port;
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
    }
    return Py_BuildValue("(si)", host, port);
}

static PyObject *recv_batch(PyObject *self, PyObject *args) {
    int fd, max;
    Py_ssize_t bufsize;
    (void)self;
    if (!PyArg_ParseTuple(args, "iin", &fd, &max, &bufsize)) return NULL;
    if (max < 1) max = 1;
    if (max > MAXB) max = MAXB;
    if (bufsize < 1) bufsize = 1;
    size_t need = (size_t)max * (size_t)bufsize;
    if (need > rbuf_size) {
        char *p = realloc(rbuf, need);
        if (!p) return PyErr_NoMemory();
        rbuf = p;
        rbuf_size = need;
    }
    for (int i = 0; i < max; i++) {
        riov[i].iov_base = rbuf + (size_t)i * bufsize;
        riov[i].iov_len = bufsize;
        memset(&rmsg[i].msg_hdr, 0, sizeof rmsg[i].msg_hdr);
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
        rmsg[i].msg_hdr.msg_name = &rname[i];
        rmsg[i].msg_hdr.msg_namelen = sizeof rname[i];
    }
    int n;
    do n = recvmmsg(fd, rmsg, max, MSG_DONTWAIT, NULL); while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *addr = peer(&rname[i]);
        PyObject *item = addr ? Py_BuildValue("(y#N)", (char *)riov[i].iov_base,
                                              (Py_ssize_t)rmsg[i].msg_len, addr) : NULL;
        if (!item) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* Fill *sa from a (host, port) tuple; 0 on success, -1 when unusable (no exception set). */
static int sockaddr_of(PyObject *dest, int family, struct sockaddr_storage *sa, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(dest) || PyTuple_GET_SIZE(dest) < 2) return -1;
    PyObject *h = PyTuple_GET_ITEM(dest, 0), *p = PyTuple_GET_ITEM(dest, 1);
    if (!PyUnicode_Check(h) || !PyLong_Check(p)) return -1;
    host = PyUnicode_AsUTF8(h);
    port = (int)PyLong_AsLong(p);
    if (!host || port < 0 || port > 65535) { PyErr_Clear(); return -1; }
    memset(sa, 0, sizeof *sa);
    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        if (strchr(host, ':')) {
            if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) return -1;
        } else {
            char mapped[64];
            snprintf(mapped, sizeof mapped, "::ffff:%s", host);
            if (inet_pton(AF_INET6, mapped, &s6->sin6_addr) != 1) return -1;
        }
        *len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) return -1;
        *len = sizeof *s4;
    }
    return 0;
}

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *items;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &items)) return NULL;
    Py_ssize_t total = PyList_GET_SIZE(items), taken = 0, failed = 0;
    while (taken < total) {
        int k = 0;
        for (Py_ssize_t j = taken; j < total && k < MAXB; j++) {
            PyObject *it = PyList_GET_ITEM(items, j);
            char *data;
            Py_ssize_t dlen;
            socklen_t alen;
            if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) < 2
                || PyBytes_AsStringAndSize(PyTuple_GET_ITEM(it, 0), &data, &dlen) < 0
                || sockaddr_of(PyTuple_GET_ITEM(it, 1), family, &sname[k], &alen) < 0) {
                PyErr_Clear();
                break;
            }
            siov[k].iov_base = data;
            siov[k].iov_len = dlen;
            memset(&smsg[k].msg_hdr, 0, sizeof smsg[k].msg_hdr);
            smsg[k].msg_hdr.msg_iov = &siov[k];
            smsg[k].msg_hdr.msg_iovlen = 1;
            smsg[k].msg_hdr.msg_name = &sname[k];
            smsg[k].msg_hdr.msg_namelen = alen;
            k++;
        }
        if (k == 0) { taken++; failed++; continue; }  /* unusable item at the front */
        int sent = sendmmsg(fd, smsg, k, 0);
        if (sent > 0) { taken += sent; continue; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
        taken++;  /* refused for good (EMSGSIZE, unreachable, ...): skip it */
        failed++;
    }
    return Py_BuildValue("(nn)", taken, failed);
}

static PyMethodDef methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS, "recvmmsg: up to max queued datagrams."},
    {"send_batch", send_batch, METH_VARARGS, "sendmmsg: send from the front of items."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mmsg", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__mmsg(void) { return PyModule_Create(&module); }
