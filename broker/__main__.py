from proxy.cli import main

raise SystemExit(main(["broker", *__import__("sys").argv[1:]]))
