from engram_cli.cli.app import main

main()
