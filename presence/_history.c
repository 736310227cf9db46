/* busylamp.presence._history: the NOTIFY-answer hook of presence/history.py in C.
 *
 * Optional (built by `python -m busylamp.presence.node.buildext`); History falls back to its
 * own Python method when this is absent. Answerer(fallback, layout) is a method of History
 * (a method descriptor: `history.answered(sub, status, now)` calls it with the history first,
 * like the Python function `fallback` = History._answered), and does its common paths:
 *
 *   - an entry (sub.note, a list) with fewer than DETAILED watchers recorded: the NOTIFY ->
 *     answer time appended to `waits`, the watcher's values appended to the entry;
 *   - an entry already full, answered 200: counted, its latency range widened.
 *
 * Everything else (tickets, other codes beyond the detailed watchers, a subscription of
 * another type, an unset slot) goes to `fallback` (History._answered) unchanged. Subscription
 * and History slots are read at the offsets of their member descriptors (looked up once per
 * type). layout = (_AT, _OK, _LAT_MIN, _LAT_MAX, _FULL, the History slot holding the waits
 * list, the subscription slot names...) as history.py defines them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define NSLOTS 5 /* note, then what a detailed watcher records: tag, remote_uri, transport, version */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback; /* callable(history, sub, status, now) */
    PyObject *names;    /* tuple of NSLOTS str: the subscription's slot names */
    PyObject *waits_name; /* the History slot holding the NOTIFY -> answer times (a list) */
    PyObject *type;     /* the subscription type the offsets are for */
    PyObject *owner;    /* the History type waits_at is for */
    Py_ssize_t offsets[NSLOTS];
    Py_ssize_t waits_at;
    Py_ssize_t at, ok, lat_min, lat_max, full;
} Answerer;

/* The offset of the object slot ``name`` of ``type`` instances, or -1. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = _PyType_Lookup(type, name);
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type)
        return -1;
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX && member->type != T_OBJECT)
        return -1;
    return member->offset;
}

static int
learn_owner(Answerer *self, PyTypeObject *type)
{
    Py_ssize_t offset = slot_offset(type, self->waits_name);
    if (offset < 0)
        return 0;
    self->waits_at = offset;
    Py_INCREF(type);
    Py_XSETREF(self->owner, (PyObject *)type);
    return 1;
}

static int
learn(Answerer *self, PyTypeObject *type)
{
    Py_ssize_t offsets[NSLOTS];
    for (int i = 0; i < NSLOTS; i++) {
        offsets[i] = slot_offset(type, PyTuple_GET_ITEM(self->names, i));
        if (offsets[i] < 0)
            return 0;
    }
    memcpy(self->offsets, offsets, sizeof offsets);
    Py_INCREF(type);
    Py_XSETREF(self->type, (PyObject *)type);
    return 1;
}

static PyObject *
call_fallback(Answerer *self, PyObject *const *args)
{
    return PyObject_Vectorcall(self->fallback, args, 4, NULL);
}

static PyObject *
answerer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Answerer *self = (Answerer *)callable;
    if (PyVectorcall_NARGS(nargsf) != 4 || kwnames != NULL)
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    PyObject *history = args[0], *sub = args[1], *status = args[2], *now = args[3];
    if ((PyObject *)Py_TYPE(history) != self->owner && !learn_owner(self, Py_TYPE(history)))
        return call_fallback(self, args);
    PyObject *waits = *(PyObject **)((char *)history + self->waits_at);
    if (waits == NULL || !PyList_CheckExact(waits))
        return call_fallback(self, args);
    PyTypeObject *type = Py_TYPE(sub);
    if ((PyObject *)type != self->type && !learn(self, type))
        return call_fallback(self, args);
    if (!PyFloat_CheckExact(now) || !PyLong_CheckExact(status))
        return call_fallback(self, args);
    char *base = (char *)sub;
    PyObject *entry = *(PyObject **)(base + self->offsets[0]);
    if (entry == NULL || !PyList_CheckExact(entry))
        return call_fallback(self, args);
    Py_ssize_t size = PyList_GET_SIZE(entry);
    if (size <= self->lat_max)
        return call_fallback(self, args); /* a ticket [entry, sent at] */
    PyObject *at = PyList_GET_ITEM(entry, self->at);
    if (!PyFloat_CheckExact(at))
        return call_fallback(self, args);
    double latency = PyFloat_AS_DOUBLE(now) - PyFloat_AS_DOUBLE(at);
    if (size < self->full) {
        PyObject *values[7];
        for (int i = 1; i < NSLOTS; i++) {
            values[i - 1] = *(PyObject **)(base + self->offsets[i]);
            if (values[i - 1] == NULL)
                return call_fallback(self, args);
        }
        values[4] = at;
        values[5] = status;
        values[6] = now;
        PyObject *wait = PyFloat_FromDouble(latency);
        if (wait == NULL)
            return NULL;
        int failed = PyList_Append(waits, wait);
        Py_DECREF(wait);
        if (failed)
            return NULL;
        /* the 7 values at once, the list grown at most to an entry's full length */
        PyListObject *list = (PyListObject *)entry;
        Py_ssize_t need = size + 7;
        if (list->allocated < need) {
            /* the first watcher gets exactly its room (most entries record one or two: a
             * SUBSCRIBE's, a lamp with few watchers), later ones grow it as a list would */
            Py_ssize_t room = size == self->lat_max + 1
                ? need : (need + (need >> 3) + 6) & ~(Py_ssize_t)3;
            if (need <= self->full && room > self->full)
                room = self->full;
            PyObject **items = PyMem_Realloc(list->ob_item, (size_t)room * sizeof(PyObject *));
            if (items == NULL)
                return PyErr_NoMemory();
            list->ob_item = items;
            list->allocated = room;
        }
        for (int i = 0; i < 7; i++) {
            Py_INCREF(values[i]);
            list->ob_item[size + i] = values[i];
        }
        Py_SET_SIZE(list, need);
        Py_RETURN_NONE;
    }
    /* beyond the detailed watchers: counted (200 only here), a latency range */
    int overflow = 0;
    if (PyLong_AsLongAndOverflow(status, &overflow) != 200 || overflow)
        return call_fallback(self, args);
    PyObject *ok = PyList_GET_ITEM(entry, self->ok);
    PyObject *lo = PyList_GET_ITEM(entry, self->lat_min);
    PyObject *hi = PyList_GET_ITEM(entry, self->lat_max);
    if (!PyLong_CheckExact(ok) || !PyFloat_CheckExact(lo) || !PyFloat_CheckExact(hi))
        return call_fallback(self, args);
    PyObject *wait = PyFloat_FromDouble(latency);
    if (wait == NULL)
        return NULL;
    if (PyList_Append(waits, wait)) {
        Py_DECREF(wait);
        return NULL;
    }
    if (latency > PyFloat_AS_DOUBLE(hi)) {
        Py_INCREF(wait);
        PyList_SetItem(entry, self->lat_max, wait); /* steals the reference */
    }
    if (latency < PyFloat_AS_DOUBLE(lo)) {
        Py_INCREF(wait);
        PyList_SetItem(entry, self->lat_min, wait);
    }
    Py_DECREF(wait);
    PyObject *one = PyLong_FromLong(1);
    PyObject *more = PyNumber_Add(ok, one);
    Py_DECREF(one);
    if (more == NULL)
        return NULL;
    PyList_SetItem(entry, self->ok, more);
    Py_RETURN_NONE;
}

static PyObject *
answerer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fallback, *layout;
    if (!PyArg_ParseTuple(args, "OO!:Answerer", &fallback, &PyTuple_Type, &layout))
        return NULL;
    if (PyTuple_GET_SIZE(layout) != 6 + NSLOTS) {
        PyErr_SetString(PyExc_ValueError,
                        "layout: (_AT, _OK, _LAT_MIN, _LAT_MAX, _FULL, waits slot, 5 slot names)");
        return NULL;
    }
    Py_ssize_t numbers[5];
    for (int i = 0; i < 5; i++) {
        numbers[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, i));
        if (numbers[i] < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "layout: negative index");
            return NULL;
        }
    }
    PyObject *names = PyTuple_GetSlice(layout, 5, 6 + NSLOTS);
    if (names == NULL)
        return NULL;
    for (int i = 0; i <= NSLOTS; i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(names, i))) {
            Py_DECREF(names);
            PyErr_SetString(PyExc_TypeError, "layout: slot names are str");
            return NULL;
        }
    }
    Answerer *self = (Answerer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    self->vectorcall = answerer_vectorcall;
    Py_INCREF(fallback);
    self->fallback = fallback;
    self->waits_name = PyTuple_GET_ITEM(names, 0);
    Py_INCREF(self->waits_name);
    self->names = PyTuple_GetSlice(names, 1, 1 + NSLOTS);
    Py_DECREF(names);
    self->type = NULL;
    self->owner = NULL;
    if (self->names == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->at = numbers[0];
    self->ok = numbers[1];
    self->lat_min = numbers[2];
    self->lat_max = numbers[3];
    self->full = numbers[4];
    if (self->lat_max < self->at || self->lat_max < self->ok || self->lat_max < self->lat_min) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "layout: _LAT_MAX must be the last header index used");
        return NULL;
    }
    return (PyObject *)self;
}

static int
answerer_traverse(Answerer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->type);
    Py_VISIT(self->owner);
    return 0;
}

static int
answerer_clear(Answerer *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->type);
    Py_CLEAR(self->owner);
    return 0;
}

static void
answerer_dealloc(Answerer *self)
{
    PyObject_GC_UnTrack(self);
    answerer_clear(self);
    Py_CLEAR(self->names);
    Py_CLEAR(self->waits_name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
answerer_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    return PyVectorcall_Call(self, args, kwds);
}

/* history.answered outside a call: a bound method, as for a Python function */
static PyObject *
answerer_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyTypeObject AnswererType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "busylamp.presence._history.Answerer",
    .tp_doc = "History.answered in C: answered = Answerer(History._answered, layout).",
    .tp_basicsize = sizeof(Answerer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_descr_get = answerer_get,
    .tp_vectorcall_offset = offsetof(Answerer, vectorcall),
    .tp_new = answerer_new,
    .tp_call = answerer_call,
    .tp_traverse = (traverseproc)answerer_traverse,
    .tp_clear = (inquiry)answerer_clear,
    .tp_dealloc = (destructor)answerer_dealloc,
};

/* Whether ``op`` can never be part of a reference cycle: an object of a non-GC type (str, int,
 * float, None...) or a container the collector already stopped tracking. */
static int
atom(PyObject *op)
{
    return !PyObject_IS_GC(op) || !PyObject_GC_IsTracked(op);
}

/* untrack(entry): the collector stops tracking a history entry (a list) and the tuples in it
 * that hold only atoms. Entries never point at anything that could point back (presence/
 * history.py keeps them acyclic: strings, numbers, None, tuples of those, a dict of counts),
 * so the young collections need not walk them item by item. A container left out of the
 * collector is never freed by mistake: at worst a cycle through it would leak. */
static PyObject *
untrack(PyObject *module, PyObject *entry)
{
    if (!PyList_CheckExact(entry))
        Py_RETURN_NONE;
    Py_ssize_t size = PyList_GET_SIZE(entry);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PyList_GET_ITEM(entry, i);
        if (atom(item))
            continue;
        if (!PyTuple_CheckExact(item))
            Py_RETURN_NONE; /* something else: the entry stays tracked */
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(item); j++)
            if (!atom(PyTuple_GET_ITEM(item, j)))
                Py_RETURN_NONE;
        PyObject_GC_UnTrack(item);
    }
    PyObject_GC_UnTrack(entry);
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"untrack", untrack, METH_O,
     "untrack(entry): leave a history entry made of atoms out of the cyclic collector."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_history", "History hooks in C (see presence/history.py).", -1,
    functions,
};

PyMODINIT_FUNC
PyInit__history(void)
{
    if (PyType_Ready(&AnswererType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AnswererType);
    if (PyModule_AddObject(m, "Answerer", (PyObject *)&AnswererType) < 0) {
        Py_DECREF(&AnswererType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
