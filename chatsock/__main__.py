from chatsock.cli import main

raise SystemExit(main())
