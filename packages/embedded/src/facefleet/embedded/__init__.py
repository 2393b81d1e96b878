"""The embedded local stack: moto and nx-27017 servers (`servers`) and a local Batch executor
(`batch`). Development and tests only: production installs never pull it."""
