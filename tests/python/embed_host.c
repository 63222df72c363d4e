/* A C program embedding CPython through libpython, the shape of mod_wsgi:
 * `embed_host SCRIPT ARGS...` runs SCRIPT with sys.argv = [SCRIPT, ARGS...]. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    PyConfig config;
    PyStatus status;
    FILE *script;
    int rc;

    if (argc < 2)
        return 2;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0; /* sys.argv is argv[1..] as given */
    status = PyConfig_SetBytesArgv(&config, argc - 1, argv + 1);
    if (PyStatus_Exception(status))
        return 2;
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return 2;
    script = fopen(argv[1], "r");
    if (!script)
        return 3;
    rc = PyRun_SimpleFileEx(script, argv[1], 1);
    if (Py_FinalizeEx() < 0)
        return 4;
    return rc == 0 ? 0 : 1;
}
