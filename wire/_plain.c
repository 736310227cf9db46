/* busylamp.wire._plain: the value check of the update fast path (wire/updates.py) in C.
 *
 * Optional (built by `python -m busylamp.presence.node.buildext`); wire/updates.py falls back to
 * its Python loop `_plain_values` when this is absent, and the suite runs both.
 *
 *   plain_values(obj: dict, clean: set, int_fields: frozenset, longest: int, clean_max: int)
 *       -> bool
 *
 * True when every value of `obj` is in `clean` (strings found clean before), a str of at most
 * `longest` printable ASCII characters (then added to `clean`, which is emptied first when it
 * holds `clean_max`), or an int (exactly) under a key in `int_fields`. False for anything else,
 * and for an unhashable value (the TypeError of the set look-up is swallowed, as the Python loop
 * does); any other error is raised.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int
printable_ascii(PyObject *text)
{
    if (!PyUnicode_IS_ASCII(text))
        return 0;
    const unsigned char *at = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < size; i++)
        if (at[i] < 0x20 || at[i] > 0x7e)
            return 0;
    return 1;
}

static PyObject *
plain_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[0]) || !PySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "plain_values(obj: dict, clean: set, int_fields, longest, clean_max)");
        return NULL;
    }
    PyObject *obj = args[0], *clean = args[1], *int_fields = args[2];
    Py_ssize_t longest = PyLong_AsSsize_t(args[3]);
    Py_ssize_t clean_max = PyLong_AsSsize_t(args[4]);
    if ((longest == -1 || clean_max == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(obj, &pos, &key, &value)) {
        Py_INCREF(key);
        Py_INCREF(value);
        int verdict; /* 1 fine, 0 not plain, -1 error */
        int known = PySet_Contains(clean, value);
        if (known < 0) {
            verdict = -1;
            if (PyErr_ExceptionMatches(PyExc_TypeError)) { /* an unhashable value */
                PyErr_Clear();
                verdict = 0;
            }
        } else if (known) {
            verdict = 1;
        } else if (PyUnicode_CheckExact(value)) {
            verdict = PyUnicode_GET_LENGTH(value) <= longest && printable_ascii(value);
            if (verdict) {
                if (PySet_GET_SIZE(clean) >= clean_max && PySet_Clear(clean) < 0)
                    verdict = -1;
                else if (PySet_Add(clean, value) < 0)
                    verdict = -1;
            }
        } else if (PyLong_CheckExact(value)) {
            verdict = PySequence_Contains(int_fields, key);
            if (verdict < 0 && PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                verdict = 0;
            }
        } else {
            verdict = 0;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        if (verdict < 0)
            return NULL;
        if (!verdict)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"plain_values", (PyCFunction)(void (*)(void))plain_values, METH_FASTCALL,
     "plain_values(obj, clean, int_fields, longest, clean_max) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_plain",
    "The value check of the update fast path in C (see wire/updates.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__plain(void)
{
    return PyModule_Create(&module);
}
