from vmemtrace.cli import main

main()
