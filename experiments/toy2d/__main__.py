from experiments.toy2d.main import main

main()
