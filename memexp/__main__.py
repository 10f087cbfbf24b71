from memexp.cli import main

main()
