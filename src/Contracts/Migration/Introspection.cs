namespace SEmigrate.Contracts.Migration;

/// <summary>At the source: read the kernel structures of its guest <paramref name="Guest"/> and classify every page.</summary>
public sealed record IntrospectGuest(Guid MigrationId, Guid Vm, string Guest, MigrationMode Mode, IReadOnlyList<string> PlainProcesses, MigrationRequest? Request = null);

/// <summary>What introspection found. The per-page classes stay at the source (they reach the main
/// host sealed, over the page path); placement gets guest pages per chunk of
/// <paramref name="ChunkPages"/> pages, which is small for any VM size, and
/// <paramref name="ChunkSentPages"/> says how many of them travel with bytes in the migration's mode
/// (the rest are free: nothing of them travels), which is what a destination must make room for now.
/// <paramref name="HandOverPages"/>: what the hand-over will store at the main host besides its share
/// (the manifest, and a running guest's device state, kernel and initramfs), at most.
/// <paramref name="PausedAt"/>: when a running guest was paused for the stop-and-copy (the source's clock).</summary>
public sealed record IntrospectionResult(
    PageCounts Pages,
    long PfnLimit,
    int Tasks,
    int Processes,
    IReadOnlyList<string> Diagnostics,
    int ChunkPages,
    IReadOnlyList<int> ChunkGuestPages,
    IReadOnlyList<int> ChunkSentPages,
    long HandOverPages = 0,
    DateTimeOffset? PausedAt = null);

/// <summary>At the source, before anything stops: the layout of its guest <paramref name="Guest"/>, enough
/// to place it and start paging while a running guest still runs (its pages are classified later,
/// paused).</summary>
public sealed record MeasureGuest(Guid MigrationId, Guid Vm, string Guest, MigrationRequest? Request = null);

/// <summary>A guest's memory layout: guest pages per chunk of <paramref name="ChunkPages"/> pages (as
/// <see cref="IntrospectionResult"/> gives them), and <paramref name="HandOverPages"/>, what the
/// hand-over will store at the main host besides its share, at most. Under a drain order (which nobody
/// signs per migration) <paramref name="Vouches"/> holds the source's word, per destination, that it
/// measured this guest for this migration (see <see cref="SourceVouch"/>).</summary>
public sealed record GuestLayout(long PfnLimit, int ChunkPages, IReadOnlyList<int> ChunkGuestPages, long HandOverPages,
    IReadOnlyDictionary<string, SourceVouch>? Vouches = null);

/// <summary>The source's word to one destination that it measured the migration's guest, at most
/// <paramref name="Pages"/> pages with its hand-over: an HMAC (<paramref name="Mac"/>, hex) under the two hosts'
/// static ECDH agreement (Sealing's HostKeyPair.Vouch) over migration, VM, guest, destination and pages. Under a
/// drain order a destination reserves room only with it, and no more than it says: a migration made up
/// under the order, which the source never measured, reserves nothing.</summary>
public sealed record SourceVouch(long Pages, string Mac)
{
    public static string Statement(Guid migrationId, Guid vm, string guest, string destination, long pages) =>
        $"semigrate measured v1|{migrationId:N}|{vm:N}|{guest}|{destination}|{pages}";
}
