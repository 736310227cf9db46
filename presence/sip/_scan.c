/* busylamp.presence.sip._scan: the two byte scans every SIP message starts with, in C.
 *
 * Optional (built by `python -m busylamp.presence.node.buildext`); presence/sip/sniff.py and
 * presence/sip/parse.py keep the Python versions, which are the specification: the suite runs
 * both and checks that they agree on the torture messages and on mutants of them.
 *
 *   sniff_response(data: bytes) -> (status, branch) | None
 *       presence/sip/sniff.py:sniff_response, the same answer for every input.
 *
 *   split_head(data: bytes, names: dict) -> (start_line, items, index, body_at) | None
 *       The header block of the common message: it starts at once (no leading CRLF), ends at
 *       the first CRLF CRLF, its lines are separated by CRLF, no line is folded (starts with SP
 *       or HT), every header line holds a colon and the text before it is a key of `names` (raw
 *       header name -> canonical name, presence/sip/headers.py:CANON_CACHE). For such a message
 *       the result is what parse.py's _split_head and _parse_headers give: the start line, the
 *       (canonical name, value stripped of SP and HT) pairs, the same pairs grouped by name in
 *       wire order, and where the body starts. Anything else gives None, and the caller parses
 *       in Python (which also fills `names`). Text is decoded as UTF-8 with surrogateescape, as
 *       the Python parser decodes the whole head: every cut is at an ASCII byte, so decoding
 *       the pieces gives the same text.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* ---- sniff_response ------------------------------------------------------------------------ */

static const char *
find_bytes(const char *at, const char *stop, const char *needle, size_t size)
{
    if (stop - at < (Py_ssize_t)size)
        return NULL;
    const char *last = stop - size;
    while (at <= last) {
        const char *hit = memchr(at, needle[0], (size_t)(last - at + 1));
        if (hit == NULL)
            return NULL;
        if (memcmp(hit, needle, size) == 0)
            return hit;
        at = hit + 1;
    }
    return NULL;
}

static PyObject *
sniff_response(PyObject *module, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "sniff_response: data must be bytes");
        return NULL;
    }
    const char *base = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 12 || memcmp(base, "SIP/2.0 ", 8) != 0 || (base[11] != ' ' && base[11] != '\r'))
        Py_RETURN_NONE;
    int status = 0;
    for (int i = 8; i < 11; i++) {
        if (base[i] < '0' || base[i] > '9')
            Py_RETURN_NONE;
        status = status * 10 + (base[i] - '0');
    }
    const char *stop = base + size;
    const char *head_end = find_bytes(base, stop, "\r\n\r\n", 4);
    if (head_end == NULL)
        Py_RETURN_NONE;
    /* the top Via: the first "\r\nVia:" or "\r\nv:" that lies wholly before the blank line */
    const char *via = NULL;
    for (const char *at = base; (at = find_bytes(at, head_end, "\r\n", 2)) != NULL; at += 2) {
        if ((head_end - at >= 6 && memcmp(at + 2, "Via:", 4) == 0)
            || (head_end - at >= 4 && memcmp(at + 2, "v:", 2) == 0)) {
            via = at;
            break;
        }
    }
    if (via == NULL)
        Py_RETURN_NONE;
    const char *line = via + 2;
    const char *line_end = find_bytes(line, stop, "\r\n", 2);
    if (line_end == NULL || line_end > head_end)
        line_end = head_end;
    const char *comma = memchr(line, ',', (size_t)(line_end - line));
    if (comma != NULL)
        line_end = comma; /* several Via values on one line: the first is the top one */
    const char *at = find_bytes(line, line_end, ";branch=", 8);
    if (at == NULL)
        Py_RETURN_NONE;
    const char *value = at + 8, *value_end = value;
    while (value_end < line_end && *value_end != ';' && *value_end != ' ' && *value_end != '\t')
        value_end++;
    if (value_end == value)
        Py_RETURN_NONE;
    PyObject *branch = PyUnicode_DecodeASCII(value, value_end - value, "replace");
    if (branch == NULL)
        return NULL;
    PyObject *code = PyLong_FromLong(status);
    if (code == NULL) {
        Py_DECREF(branch);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, code, branch);
    Py_DECREF(code);
    Py_DECREF(branch);
    return result;
}

/* ---- split_head ---------------------------------------------------------------------------- */

/* Raw header names repeat in every message: names up to NAME_LONGEST bytes are decoded once
 * and kept (with their hash) in a small open-addressed table; one that finds no room is
 * decoded anew. */
#define NAME_SLOTS 1024 /* a power of two */
#define NAME_LONGEST 48
#define NAME_PROBES 8
static PyObject *raw_names[NAME_SLOTS];

static PyObject *
raw_name(const char *at, Py_ssize_t size)
{
    if (size > NAME_LONGEST)
        return PyUnicode_DecodeUTF8(at, size, "surrogateescape");
    uint32_t hash = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < size; i++)
        hash = (hash ^ (unsigned char)at[i]) * 16777619u;
    for (int probe = 0; probe < NAME_PROBES; probe++) {
        PyObject **slot = &raw_names[(hash + probe) & (NAME_SLOTS - 1)];
        PyObject *known = *slot;
        if (known == NULL) {
            PyObject *name = PyUnicode_DecodeUTF8(at, size, "surrogateescape");
            if (name == NULL || !PyUnicode_IS_ASCII(name))
                return name;
            if (PyObject_Hash(name) == -1) {
                Py_DECREF(name);
                return NULL;
            }
            Py_INCREF(name);
            *slot = name;
            return name;
        }
        if (PyUnicode_GET_LENGTH(known) == size && memcmp(PyUnicode_DATA(known), at, size) == 0) {
            Py_INCREF(known);
            return known;
        }
    }
    return PyUnicode_DecodeUTF8(at, size, "surrogateescape");
}

/* One header line -> (canonical name, value) appended to items and index; 0 when the line is
 * not of the common shape (the caller then gives up), -1 on error. */
static int
add_header(const char *line, const char *line_end, PyObject *names, PyObject *items,
           PyObject *index)
{
    if (line == line_end || *line == ' ' || *line == '\t')
        return 0; /* an empty or folded line */
    const char *colon = memchr(line, ':', (size_t)(line_end - line));
    if (colon == NULL)
        return 0;
    PyObject *raw = raw_name(line, colon - line);
    if (raw == NULL)
        return -1;
    PyObject *name = PyDict_GetItemWithError(names, raw); /* borrowed */
    Py_DECREF(raw);
    if (name == NULL)
        return PyErr_Occurred() ? -1 : 0;
    const char *value = colon + 1, *value_end = line_end;
    while (value < value_end && (*value == ' ' || *value == '\t'))
        value++;
    while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
        value_end--;
    PyObject *text = PyUnicode_DecodeUTF8(value, value_end - value, "surrogateescape");
    if (text == NULL)
        return -1;
    PyObject *pair = PyTuple_Pack(2, name, text);
    if (pair == NULL || PyList_Append(items, pair) < 0) {
        Py_XDECREF(pair);
        Py_DECREF(text);
        return -1;
    }
    Py_DECREF(pair);
    PyObject *bucket = PyDict_GetItemWithError(index, name); /* borrowed */
    int failed;
    if (bucket != NULL) {
        failed = PyList_Append(bucket, text) < 0;
    } else if (PyErr_Occurred()) {
        failed = 1;
    } else {
        bucket = PyList_New(1);
        if (bucket == NULL) {
            failed = 1;
        } else {
            Py_INCREF(text);
            PyList_SET_ITEM(bucket, 0, text);
            failed = PyDict_SetItem(index, name, bucket) < 0;
            Py_DECREF(bucket);
        }
    }
    Py_DECREF(text);
    return failed ? -1 : 1;
}

static PyObject *
split_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "split_head(data: bytes, names: dict)");
        return NULL;
    }
    PyObject *names = args[1];
    const char *base = PyBytes_AS_STRING(args[0]);
    const char *stop = base + PyBytes_GET_SIZE(args[0]);
    const char *head_end = find_bytes(base, stop, "\r\n\r\n", 4);
    if (head_end == NULL || head_end == base || (base[0] == '\r' && base[1] == '\n'))
        Py_RETURN_NONE;
    const char *first_end = find_bytes(base, head_end + 2, "\r\n", 2);
    PyObject *start = PyUnicode_DecodeUTF8(base, first_end - base, "surrogateescape");
    if (start == NULL)
        return NULL;
    PyObject *items = PyList_New(0);
    PyObject *index = PyDict_New();
    if (items == NULL || index == NULL)
        goto failed;
    const char *line = first_end + 2;
    while (line < head_end + 2) {
        const char *line_end = find_bytes(line, head_end + 2, "\r\n", 2);
        int added = add_header(line, line_end, names, items, index);
        if (added < 0)
            goto failed;
        if (added == 0) {
            Py_DECREF(start);
            Py_DECREF(items);
            Py_DECREF(index);
            Py_RETURN_NONE;
        }
        line = line_end + 2;
    }
    PyObject *body_at = PyLong_FromSsize_t(head_end + 4 - base);
    if (body_at == NULL)
        goto failed;
    PyObject *result = PyTuple_Pack(4, start, items, index, body_at);
    Py_DECREF(body_at);
    Py_DECREF(start);
    Py_DECREF(items);
    Py_DECREF(index);
    return result;
failed:
    Py_DECREF(start);
    Py_XDECREF(items);
    Py_XDECREF(index);
    return NULL;
}

static PyMethodDef methods[] = {
    {"sniff_response", (PyCFunction)sniff_response, METH_O,
     "sniff_response(data) -> (status, branch) | None"},
    {"split_head", (PyCFunction)(void (*)(void))split_head, METH_FASTCALL,
     "split_head(data, names) -> (start_line, items, index, body_at) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "The byte scans every SIP message starts with, in C (see presence/sip/sniff.py, parse.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
