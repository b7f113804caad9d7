namespace SEmigrate.Contracts.Migration;

/// <summary>At the source: read the guest kernel's structures and classify every page.</summary>
public sealed record IntrospectGuest(Guid MigrationId, Guid Vm, string GuestDir, MigrationMode Mode, IReadOnlyList<string> PlainProcesses);

/// <summary>What introspection found. The per-page classes stay in a file at the source
/// (<paramref name="MapPath"/>); placement gets guest pages per chunk of <paramref name="ChunkPages"/>
/// pages, which is small for any VM size.</summary>
public sealed record IntrospectionResult(
    PageCounts Pages,
    long PfnLimit,
    int Tasks,
    int Processes,
    IReadOnlyList<string> Diagnostics,
    string MapPath,
    int ChunkPages,
    IReadOnlyList<int> ChunkGuestPages);
