from nfgen.cli.app import main

main()
