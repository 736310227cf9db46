/* busylamp.presence.sip._values: the header values a new dialog is made of, parsed in C.
 *
 * Optional (built by `python -m busylamp.presence.node.buildext`). presence/sip/uri.py and
 * presence/sip/via.py keep the Python parsers, which are the specification: the suite runs both
 * and checks that they agree on every value of the torture messages and captures, and on
 * mutants of them (tests/unit/test_sip_values.py).
 *
 *   sip_uri(text) -> (scheme, user, password, host, port, params, None) | None
 *       the fields of uri.py:_parse_uri for a plain sip:/sips: URI;
 *   name_addr(text) -> (display, uri, params) | None
 *       the fields of uri.py:_parse_name_addr;
 *   via(text) -> (transport, host, port, params, raw, protocol) | None
 *       the fields of via.py:_parse_via.
 *
 * Only the plain case is taken: ASCII between SP and '~' (SP the only white space), no quoted
 * parameter value, no escaped display name, no IPv6 reference, no URI headers, no tel: URI, and
 * nothing the Python parser refuses. Anything else gives None and the caller parses in Python,
 * which also gives the right 400 for a bad value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { TOKEN = 1, HOST = 2, SCHEME = 4 };
static unsigned char kind[256];
static PyObject *str_sip, *str_sips, *str_udp, *str_tcp, *str_sip20;

static void
fill_kinds(void)
{
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (alnum || (c && strchr("-.!%*_+`'~", c)))
            kind[c] |= TOKEN;
        if (alnum || c == '-' || c == '.' || c == '_')
            kind[c] |= HOST;
        if (alnum || c == '+' || c == '-' || c == '.')
            kind[c] |= SCHEME;
    }
}

/* The text of an ASCII str whose every character lies in [lowest, '~'], else NULL. */
static const char *
plain_text(PyObject *text, Py_ssize_t *size, unsigned char lowest)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text))
        return NULL;
    const unsigned char *at = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (at[i] < lowest || at[i] > '~')
            return NULL;
    *size = n;
    return (const char *)at;
}

static PyObject *
ascii(const char *at, Py_ssize_t n)
{
    PyObject *out = PyUnicode_New(n, 127);
    if (out != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(out), at, (size_t)n);
    return out;
}

static PyObject *
ascii_case(const char *at, Py_ssize_t n, int upper)
{
    PyObject *out = PyUnicode_New(n, 127);
    if (out == NULL)
        return NULL;
    Py_UCS1 *to = PyUnicode_1BYTE_DATA(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)at[i];
        if (upper && c >= 'a' && c <= 'z')
            c -= 32;
        else if (!upper && c >= 'A' && c <= 'Z')
            c += 32;
        to[i] = c;
    }
    return out;
}

static void
strip(const char **at, const char **stop)
{
    while (*at < *stop && **at == ' ')
        (*at)++;
    while (*stop > *at && (*stop)[-1] == ' ')
        (*stop)--;
}

/* grammar.py:parse_hostport for 'host' or 'host:port' (no IPv6 reference): 1 parsed, 0 not
 * plain (or refused), -1 error. */
static int
hostport(const char *at, const char *stop, PyObject **host, PyObject **port)
{
    if (at == stop || *at == '[')
        return 0;
    const char *colon = memchr(at, ':', (size_t)(stop - at));
    const char *host_end = colon ? colon : stop;
    if (host_end == at)
        return 0;
    for (const char *c = at; c < host_end; c++)
        if (!(kind[(unsigned char)*c] & HOST))
            return 0;
    long value = -1;
    if (colon) {
        const char *digit = colon + 1;
        if (digit == stop || stop - digit > 5)
            return 0;
        for (value = 0; digit < stop; digit++) {
            if (*digit < '0' || *digit > '9')
                return 0;
            value = value * 10 + (*digit - '0');
        }
        if (value > 65535)
            return 0;
    }
    *host = ascii(at, host_end - at);
    if (*host == NULL)
        return -1;
    if (value < 0) {
        Py_INCREF(Py_None);
        *port = Py_None;
    } else if ((*port = PyLong_FromLong(value)) == NULL) {
        Py_CLEAR(*host);
        return -1;
    }
    return 1;
}

/* grammar.py:split_params on text already stripped of SP: empty, or ';' then ';'-separated
 * 'name[=value]' with token names (lower-cased, interned) and non-empty values. Returns a new
 * dict, Py_None (not plain or refused: the Python parser decides) or NULL (error). */
static PyObject *
params(const char *at, const char *stop)
{
    PyObject *out = PyDict_New();
    if (out == NULL || at == stop)
        return out;
    if (*at != ';' || memchr(at, '"', (size_t)(stop - at)) != NULL)
        goto not_plain;
    for (const char *part = at + 1;;) {
        const char *part_end = memchr(part, ';', (size_t)(stop - part));
        if (part_end == NULL)
            part_end = stop;
        const char *eq = memchr(part, '=', (size_t)(part_end - part));
        const char *name = part, *name_end = eq ? eq : part_end;
        strip(&name, &name_end);
        if (name == name_end)
            goto not_plain;
        for (const char *c = name; c < name_end; c++)
            if (!(kind[(unsigned char)*c] & TOKEN))
                goto not_plain;
        PyObject *value;
        if (eq) {
            const char *v = eq + 1, *v_end = part_end;
            strip(&v, &v_end);
            if (v == v_end)
                goto not_plain;
            value = ascii(v, v_end - v);
        } else {
            Py_INCREF(Py_None);
            value = Py_None;
        }
        PyObject *key = value ? ascii_case(name, name_end - name, 0) : NULL;
        if (key != NULL)
            PyUnicode_InternInPlace(&key);
        int failed = key == NULL || PyDict_SetItem(out, key, value) < 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
        if (part_end == stop)
            return out;
        part = part_end + 1;
    }
not_plain:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyObject *
sip_uri(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *at = plain_text(text, &n, '!');
    if (at == NULL)
        Py_RETURN_NONE;
    const char *stop = at + n;
    for (const char *c = at; c < stop; c++)
        if (*c == '<' || *c == '>' || *c == '?' || *c == '"')
            Py_RETURN_NONE;
    const char *colon = memchr(at, ':', (size_t)n);
    if (colon == NULL)
        Py_RETURN_NONE;
    PyObject *scheme;
    if (colon - at == 3 && strncasecmp(at, "sip", 3) == 0)
        scheme = str_sip;
    else if (colon - at == 4 && strncasecmp(at, "sips", 4) == 0)
        scheme = str_sips;
    else
        Py_RETURN_NONE;
    const char *rest = colon + 1, *host_at = rest;
    const char *user = NULL, *user_end = NULL, *password = NULL, *password_end = NULL;
    const char *sign = memchr(rest, '@', (size_t)(stop - rest));
    if (sign != NULL) {
        if (memchr(sign + 1, '@', (size_t)(stop - sign - 1)) != NULL)
            Py_RETURN_NONE;
        user = rest;
        user_end = memchr(rest, ':', (size_t)(sign - rest));
        if (user_end != NULL) {
            password = user_end + 1;
            password_end = sign;
        } else {
            user_end = sign;
        }
        if (user_end == user)
            Py_RETURN_NONE;
        host_at = sign + 1;
    }
    const char *semi = memchr(host_at, ';', (size_t)(stop - host_at));
    PyObject *host = NULL, *port = NULL, *fields = NULL, *user_o = NULL, *password_o = NULL;
    int found = hostport(host_at, semi ? semi : stop, &host, &port);
    if (found <= 0)
        return found < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    fields = semi ? params(semi, stop) : PyDict_New();
    if (fields == NULL)
        goto failed;
    if (fields == Py_None) {
        Py_DECREF(host);
        Py_DECREF(port);
        return fields;
    }
    user_o = user ? ascii(user, user_end - user) : (Py_INCREF(Py_None), Py_None);
    password_o = password ? ascii(password, password_end - password) : (Py_INCREF(Py_None), Py_None);
    if (user_o == NULL || password_o == NULL)
        goto failed;
    PyObject *result = PyTuple_Pack(7, scheme, user_o, password_o, host, port, fields, Py_None);
    Py_DECREF(user_o);
    Py_DECREF(password_o);
    Py_DECREF(host);
    Py_DECREF(port);
    Py_DECREF(fields);
    return result;
failed:
    Py_XDECREF(user_o);
    Py_XDECREF(password_o);
    Py_XDECREF(host);
    Py_XDECREF(port);
    Py_XDECREF(fields);
    return NULL;
}

static PyObject *
name_addr(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *at = plain_text(text, &n, ' ');
    if (at == NULL)
        Py_RETURN_NONE;
    const char *stop = at + n;
    strip(&at, &stop);
    if (at == stop)
        Py_RETURN_NONE;
    const char *display = NULL, *display_end = NULL, *lt = NULL;
    if (*at == '"') {
        const char *close = memchr(at + 1, '"', (size_t)(stop - at - 1));
        if (close == NULL || memchr(at, '\\', (size_t)(close - at)) != NULL)
            Py_RETURN_NONE;
        display = at + 1;
        display_end = close;
        lt = close + 1;
        while (lt < stop && *lt == ' ')
            lt++;
        if (lt == stop || *lt != '<')
            Py_RETURN_NONE;
    } else {
        lt = memchr(at, '<', (size_t)(stop - at));
        const char *semi = memchr(at, ';', (size_t)(stop - at));
        if (lt != NULL && (semi == NULL || lt < semi)) {
            display = at;
            display_end = lt;
            strip(&display, &display_end);
            if (display == display_end)
                display = NULL;
        } else {
            lt = NULL;
        }
    }
    const char *uri, *uri_end, *rest;
    if (lt != NULL) {
        const char *gt = memchr(lt, '>', (size_t)(stop - lt));
        if (gt == NULL)
            Py_RETURN_NONE;
        uri = lt + 1;
        uri_end = gt;
        rest = gt + 1;
    } else {
        const char *semi = memchr(at, ';', (size_t)(stop - at));
        uri = at;
        uri_end = rest = semi ? semi : stop;
    }
    strip(&uri, &uri_end);
    if (uri == uri_end || memchr(uri, ' ', (size_t)(uri_end - uri)) != NULL)
        Py_RETURN_NONE;
    if (!(uri_end - uri == 1 && *uri == '*')) {
        const char *scheme_end = memchr(uri, ':', (size_t)(uri_end - uri));
        if (scheme_end == NULL)
            scheme_end = uri_end;
        if (scheme_end == uri || !((*uri >= 'a' && *uri <= 'z') || (*uri >= 'A' && *uri <= 'Z')))
            Py_RETURN_NONE;
        for (const char *c = uri + 1; c < scheme_end; c++)
            if (!(kind[(unsigned char)*c] & SCHEME))
                Py_RETURN_NONE;
    }
    const char *params_end = stop;
    strip(&rest, &params_end);
    PyObject *fields = params(rest, params_end);
    if (fields == NULL || fields == Py_None)
        return fields;
    PyObject *display_o = display ? ascii(display, display_end - display)
                                  : (Py_INCREF(Py_None), Py_None);
    PyObject *uri_o = display_o ? ascii(uri, uri_end - uri) : NULL;
    PyObject *result = uri_o ? PyTuple_Pack(3, display_o, uri_o, fields) : NULL;
    Py_XDECREF(display_o);
    Py_XDECREF(uri_o);
    Py_DECREF(fields);
    return result;
}

/* name/version/transport: a run of characters other than SP and '/' (and ';' for the last). */
static const char *
word(const char *at, const char *stop, int semicolon_ends)
{
    while (at < stop && *at != ' ' && *at != '/' && !(semicolon_ends && *at == ';'))
        at++;
    return at;
}

static PyObject *
via(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *at = plain_text(text, &n, ' ');
    if (at == NULL || n == 0 || *at == ' ')
        Py_RETURN_NONE;
    const char *stop = at + n;
    const char *name_end = word(at, stop, 0);
    if (name_end == at || name_end == stop || *name_end != '/')
        Py_RETURN_NONE;
    const char *version = name_end + 1, *version_end = word(version, stop, 0);
    if (version_end == version || version_end == stop || *version_end != '/')
        Py_RETURN_NONE;
    const char *transport = version_end + 1, *transport_end = word(transport, stop, 1);
    if (transport_end == transport || transport_end == stop || *transport_end != ' ')
        Py_RETURN_NONE;
    const char *sent_by = transport_end;
    while (sent_by < stop && *sent_by == ' ')
        sent_by++;
    if (sent_by >= stop)
        Py_RETURN_NONE;
    const char *semi = memchr(sent_by, ';', (size_t)(stop - sent_by));
    const char *sent_by_end = semi ? semi : stop;
    strip(&sent_by, &sent_by_end);
    if (memchr(sent_by, ' ', (size_t)(sent_by_end - sent_by)) != NULL)
        Py_RETURN_NONE;
    PyObject *host = NULL, *port = NULL;
    int found = hostport(sent_by, sent_by_end, &host, &port);
    if (found <= 0)
        return found < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    const char *raw_end = stop;
    while (raw_end[-1] == ' ')  /* (the text starts with no SP) */
        raw_end--;
    PyObject *fields = semi ? params(semi, raw_end) : PyDict_New();
    PyObject *upper = NULL, *raw = NULL, *protocol = NULL, *result = NULL;
    if (fields == NULL || fields == Py_None) {
        result = fields;
        fields = NULL;
        goto done;
    }
    upper = ascii_case(transport, transport_end - transport, 1);
    if (upper == NULL)
        goto done;
    if (PyUnicode_CompareWithASCIIString(upper, "UDP") == 0)
        Py_SETREF(upper, (Py_INCREF(str_udp), str_udp));
    else if (PyUnicode_CompareWithASCIIString(upper, "TCP") == 0)
        Py_SETREF(upper, (Py_INCREF(str_tcp), str_tcp));
    raw = ascii(at, raw_end - at);
    if (version_end - at == 7 && memcmp(at, "SIP/2.0", 7) == 0) {
        Py_INCREF(str_sip20);
        protocol = str_sip20;
    } else {
        protocol = ascii(at, version_end - at);
    }
    if (raw != NULL && protocol != NULL)
        result = PyTuple_Pack(6, upper, host, port, fields, raw, protocol);
done:
    Py_XDECREF(host);
    Py_XDECREF(port);
    Py_XDECREF(fields);
    Py_XDECREF(upper);
    Py_XDECREF(raw);
    Py_XDECREF(protocol);
    return result;
}

static PyMethodDef methods[] = {
    {"sip_uri", (PyCFunction)sip_uri, METH_O,
     "sip_uri(text) -> (scheme, user, password, host, port, params, None) | None"},
    {"name_addr", (PyCFunction)name_addr, METH_O,
     "name_addr(text) -> (display, uri, params) | None"},
    {"via", (PyCFunction)via, METH_O,
     "via(text) -> (transport, host, port, params, raw, protocol) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_values",
    "Plain SIP URIs, name-addrs and Vias parsed in C (see presence/sip/uri.py, via.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__values(void)
{
    fill_kinds();
    str_sip = PyUnicode_InternFromString("sip");
    str_sips = PyUnicode_InternFromString("sips");
    str_udp = PyUnicode_InternFromString("UDP");
    str_tcp = PyUnicode_InternFromString("TCP");
    str_sip20 = PyUnicode_InternFromString("SIP/2.0");
    if (!str_sip || !str_sips || !str_udp || !str_tcp || !str_sip20)
        return NULL;
    return PyModule_Create(&module);
}
