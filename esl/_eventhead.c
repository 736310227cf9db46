/* busylamp.esl._eventhead: the header lines of a text/event-plain body, parsed in C.
 *
 * Optional (built by `python -m busylamp.presence.node.buildext`); esl/protocol.py falls back to
 * its own Python `_parse_head` when this is absent, and the suite runs both and checks they agree.
 *
 *   parse_head(data: bytes, end: int, cache: dict, unquote, cache_max: int) -> dict | None
 *
 * data[:end] holds `Name: value` lines separated by LF. Per line: trailing CRs are cut; the name
 * ends at the first ": " (or, when the line has none, at the first ":"; no colon at all, or an
 * empty name, and the whole head is refused: None); names and values are decoded from UTF-8 with
 * U+FFFD for bad bytes (as decoding the whole head first would: the separators are ASCII); a value
 * holding "%" is percent-decoded by `unquote`, its answers remembered in `cache` (cleared when it
 * holds `cache_max`); a value "_undef_" becomes "". A repeated name keeps its last value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *empty_str;

/* Header names repeat in every event: ASCII names up to NAME_LONGEST bytes are made once and kept
 * (with their hash) in a small open-addressed table; a name that finds no room is made anew. */
#define NAME_SLOTS 2048 /* a power of two */
#define NAME_LONGEST 64
#define NAME_PROBES 8
static PyObject *names[NAME_SLOTS];

static PyObject *
header_name(const char *at, Py_ssize_t size)
{
    if (size > NAME_LONGEST)
        return PyUnicode_DecodeUTF8(at, size, "replace");
    uint32_t hash = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < size; i++)
        hash = (hash ^ (unsigned char)at[i]) * 16777619u;
    for (int probe = 0; probe < NAME_PROBES; probe++) {
        PyObject **slot = &names[(hash + probe) & (NAME_SLOTS - 1)];
        PyObject *known = *slot;
        if (known == NULL) {
            PyObject *name = PyUnicode_DecodeUTF8(at, size, "replace");
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
    return PyUnicode_DecodeUTF8(at, size, "replace");
}

/* The value of one line: "" for _undef_, percent-decoded through the cache, or as it is. */
static PyObject *
decode_value(const char *at, Py_ssize_t size, PyObject *cache, PyObject *unquote,
             Py_ssize_t cache_max)
{
    if (memchr(at, '%', (size_t)size) == NULL) {
        if (size == 7 && memcmp(at, "_undef_", 7) == 0) {
            Py_INCREF(empty_str);
            return empty_str;
        }
        return PyUnicode_DecodeUTF8(at, size, "replace");
    }
    PyObject *encoded = PyUnicode_DecodeUTF8(at, size, "replace");
    if (encoded == NULL)
        return NULL;
    PyObject *decoded = PyDict_GetItemWithError(cache, encoded);
    if (decoded != NULL) {
        Py_INCREF(decoded);
        Py_DECREF(encoded);
        return decoded;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(encoded);
        return NULL;
    }
    decoded = PyObject_CallOneArg(unquote, encoded);
    if (decoded == NULL) {
        Py_DECREF(encoded);
        return NULL;
    }
    if (PyDict_GET_SIZE(cache) >= cache_max)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, encoded, decoded) < 0) {
        Py_DECREF(encoded);
        Py_DECREF(decoded);
        return NULL;
    }
    Py_DECREF(encoded);
    return decoded;
}

static PyObject *
parse_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "parse_head(data, end, cache, unquote, cache_max)");
        return NULL;
    }
    PyObject *data = args[0], *cache = args[2], *unquote = args[3];
    if (!PyBytes_Check(data) || !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "parse_head: data must be bytes, cache a dict");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    Py_ssize_t cache_max = PyLong_AsSsize_t(args[4]);
    if ((end == -1 || cache_max == -1) && PyErr_Occurred())
        return NULL;
    const char *base = PyBytes_AS_STRING(data);
    if (end < 0 || end > PyBytes_GET_SIZE(data)) {
        PyErr_SetString(PyExc_ValueError, "parse_head: end out of range");
        return NULL;
    }
    if (end == 0)
        Py_RETURN_NONE;
    Py_ssize_t lines = 1;
    for (const char *at = base; (at = memchr(at, '\n', (size_t)(base + end - at))) != NULL; at++)
        lines++;
    PyObject *headers = _PyDict_NewPresized(lines);
    if (headers == NULL)
        return NULL;
    const char *line = base, *stop = base + end;
    for (;;) {
        const char *newline = memchr(line, '\n', (size_t)(stop - line));
        const char *line_end = newline != NULL ? newline : stop;
        const char *cut = line_end;
        while (cut > line && cut[-1] == '\r')
            cut--;
        const char *colon = memchr(line, ':', (size_t)(cut - line));
        if (colon == NULL)
            goto refused;
        const char *name_end = colon, *value_at = colon + 1;
        for (const char *c = colon; c != NULL;
             c = memchr(c + 1, ':', (size_t)(cut - c - 1))) {
            if (c + 1 < cut && c[1] == ' ') {
                name_end = c;
                value_at = c + 2;
                break;
            }
            if (c + 1 >= cut)
                break;
        }
        if (name_end == line)
            goto refused;
        PyObject *name = header_name(line, name_end - line);
        if (name == NULL)
            goto failed;
        PyObject *value = decode_value(value_at, cut - value_at, cache, unquote, cache_max);
        if (value == NULL) {
            Py_DECREF(name);
            goto failed;
        }
        int stored = PyDict_SetItem(headers, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (stored < 0)
            goto failed;
        if (newline == NULL)
            break;
        line = newline + 1;
    }
    return headers;
refused:
    Py_DECREF(headers);
    Py_RETURN_NONE;
failed:
    Py_DECREF(headers);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(data, end, cache, unquote, cache_max) -> dict | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_eventhead",
    "The header lines of a text/event-plain body, parsed in C (see esl/protocol.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__eventhead(void)
{
    empty_str = PyUnicode_New(0, 0);
    if (empty_str == NULL)
        return NULL;
    return PyModule_Create(&module);
}
