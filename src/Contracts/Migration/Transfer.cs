namespace SEmigrate.Contracts.Migration;

/// <summary>At the source: seal (by mode) and send the pages of one assignment to its host; free pages
/// stay behind (the manifest says which they are). <paramref name="ResumeFrom"/> is the first page not
/// yet confirmed by an earlier attempt (0 at first); <paramref name="ChannelKeyFor"/> is a sub-host's
/// public key in the allenc baseline only. <paramref name="Round"/> counts the times the share was
/// sent because the host lost it (1 at first); a new round with <paramref name="StartOver"/> sends it
/// all again (the host kept none of it), without, only what the host had not acknowledged.
/// <paramref name="Capability"/>: the VM's capability at the host, wrapped for the source (PagingStarted.ForSource).</summary>
public sealed record TransferPages(
    Guid MigrationId, Guid Vm, MigrationMode Mode, Assignment Assignment, long ResumeFrom, int Attempt, byte[]? ChannelKeyFor, int Round = 1, bool StartOver = false,
    MigrationRequest? Request = null, byte[]? Capability = null);

/// <summary>A transfer's heartbeat: every page below <paramref name="NextPfn"/> is stored at the host (in this <paramref name="Round"/>).</summary>
public sealed record TransferProgress(Guid MigrationId, string Host, long NextPfn, long PagesSent, long PagesTotal, long Bytes, int Round = 1)
{
    /// <summary>The Temporal signal that brings a transfer's progress to its workflow's Progress query.</summary>
    public const string Signal = "TransferProgressed";
}

/// <summary>A finished transfer, over all its attempts: <paramref name="Bytes"/> sent in all, of which
/// <paramref name="ResentBytes"/> (<paramref name="ResentPages"/> pages) went again because an attempt
/// died before they were confirmed (bounded by the batches in flight then, not the whole range).
/// <paramref name="Classified"/>: the range's pages by their class at the source; <paramref name="Sent"/>:
/// by the class they travelled as (its Zero: pages that did not travel, free). <paramref name="Epochs"/>:
/// the key epoch each attempt sealed (or tagged) under, one fresh epoch per attempt.</summary>
public sealed record TransferResult(string Host, long Pages, long Bytes, long ResentPages, long ResentBytes, int Attempts,
    PageCounts? Classified = null, PageCounts? Sent = null, IReadOnlyList<uint>? Epochs = null);
