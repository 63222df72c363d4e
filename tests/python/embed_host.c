/* A C program embedding CPython through libpython, the shape of mod_wsgi:
 * `embed_host SCRIPT ARGS...` runs SCRIPT with sys.argv = [SCRIPT, ARGS...].
 * Built for Debian's python3 by python_frames.rs and for each pyenv CPython
 * (2.7 to 3.13) by tests/build.rs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>

#if PY_VERSION_HEX >= 0x03080000
/* 3.8+: PyConfig. */
static int start(int argc, char **argv)
{
    PyConfig config;
    PyStatus status;

    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0; /* sys.argv is argv[1..] as given */
    status = PyConfig_SetBytesArgv(&config, argc - 1, argv + 1);
    if (PyStatus_Exception(status))
        return -1;
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    return PyStatus_Exception(status) ? -1 : 0;
}
#elif PY_MAJOR_VERSION >= 3
/* 3.6, 3.7: wide-character argv. */
static int start(int argc, char **argv)
{
    wchar_t **args = calloc(argc, sizeof(*args));
    int i;

    if (!args)
        return -1;
    for (i = 1; i < argc; i++)
        if (!(args[i - 1] = Py_DecodeLocale(argv[i], NULL)))
            return -1;
    Py_Initialize();
    PySys_SetArgvEx(argc - 1, args, 0);
    return 0;
}
#else
/* 2.7. */
static int start(int argc, char **argv)
{
    Py_SetProgramName(argv[0]);
    Py_Initialize();
    PySys_SetArgvEx(argc - 1, argv + 1, 0);
    return 0;
}
#endif

int main(int argc, char **argv)
{
    FILE *script;
    int rc;

    if (argc < 2)
        return 2;
    if (start(argc, argv) < 0)
        return 2;
    script = fopen(argv[1], "r");
    if (!script)
        return 3;
    rc = PyRun_SimpleFileEx(script, argv[1], 1);
    Py_Finalize();
    return rc == 0 ? 0 : 1;
}
