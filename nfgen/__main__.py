from nfgen.cli import main

main()
