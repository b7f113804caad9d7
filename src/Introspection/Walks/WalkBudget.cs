using System.Diagnostics;

namespace SEmigrate.Introspection.Walks;

/// <summary>What all walks of one introspection may spend together, since a hostile guest shapes them:
/// page-table leaves listed over every process (many processes each mapping all of memory, or one
/// forged tree reached from many tasks), steps along kernel lists, and time (the guest is paused
/// meanwhile). The caller's cancel is checked at every step. Once spent, every walk stops with the
/// reason as its problem, so nothing it did not finish is trusted (see Classifier).</summary>
public sealed class WalkBudget(long steps, TimeSpan time, CancellationToken ct = default)
{
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private readonly long total = steps;
    private long left = steps;
    private long calls;

    /// <summary>Leaves and list steps: four times the guest's pages, and a million more; ten minutes.</summary>
    public static WalkBudget For(ulong guestPages, CancellationToken ct = default) =>
        new((long)Math.Min(guestPages, long.MaxValue / 8) * 4 + (1 << 20), TimeSpan.FromMinutes(10), ct);

    /// <summary>Why the budget is spent, or null.</summary>
    public string? Spent { get; private set; }

    /// <summary>Takes <paramref name="n"/> steps; false (and <see cref="Spent"/> says why) once there are none left.
    /// Throws OperationCanceledException when the caller cancelled.</summary>
    public bool Take(long n = 1)
    {
        ct.ThrowIfCancellationRequested();
        if (Spent is not null)
        {
            return false;
        }
        if ((left -= n) < 0)
        {
            Spent = $"introspection budget spent: more than {total} page-table leaves and list steps over all walks: the rest is not trusted";
        }
        else if ((++calls & 0xff) == 0 && clock.Elapsed > time)
        {
            Spent = $"introspection budget spent: more than {time.TotalSeconds:0} s over all walks: the rest is not trusted";
        }
        return Spent is null;
    }
}
