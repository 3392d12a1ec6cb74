from mtls_proxy.cli import main

raise SystemExit(main())
