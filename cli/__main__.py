from rzrt.cli.main import main

main()
