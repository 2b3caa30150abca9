//! DirectoryService: RegisterAlias, RegisterAliasBatch, RemoveAlias, ResolveAlias (directory.proto).
