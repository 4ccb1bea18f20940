from voicecore.cli import main

main()
