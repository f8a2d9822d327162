from eptctl.cli import main

main()
