"""How the app is run: the simulation engine (`simulation`), one run submitted and its outcome
read (`runs`), the processes behind them (`processes`), the `fedmtl-run` command line (`cli`),
a local TLS deployment and the command lines of a real one (`local`), certificates (`certs`).
Imports `common`, `server` and `client` only, never the studies (`experiments`)."""
