from dynamics.cli import main

main()
