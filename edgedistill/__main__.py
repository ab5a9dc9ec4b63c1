from edgedistill.cli.app import main

main()
