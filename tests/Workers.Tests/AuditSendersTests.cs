using SEmigrate.Contracts.Audit;
using SEmigrate.Workers.Audit;

namespace SEmigrate.Workers.Tests;

/// <summary>Who may have the auditor record what: a host's broker user only the events that host raises
/// itself, the control plane's anything, a message without a user id nothing.</summary>
public class AuditSendersTests
{
    private static readonly DateTimeOffset At = DateTimeOffset.UnixEpoch;

    public static TheoryData<string, string?, object, bool> Cases() => new()
    {
        { "the control plane's switch-over", "semigrate", new MigrationSwitchedOver(Guid.Empty, "h1", 1, 1, At), true },
        { "a host's own report", "semigrate-host-h1", new HostSeen("h1", ["sub"], 1, 0, [], [], At), true },
        { "a host's own refusal", "semigrate-host-h1", new StepDenied(Guid.Empty, Guid.Empty, "h1", "x", "y", At), true },
        { "a main host's own page check", "semigrate-host-h1", new PageCheckFailed(Guid.Empty, Guid.Empty, "h1", "h2", 1, "x", At), true },
        { "another host's report", "semigrate-host-h2", new HostSeen("h1", ["sub"], 1, 0, [], [], At), false },
        { "a page check the main host did not raise", "semigrate-host-h2", new PageCheckFailed(Guid.Empty, Guid.Empty, "h1", "h2", 1, "x", At), false },
        { "the control plane's event from a host", "semigrate-host-h1", new MigrationSwitchedOver(Guid.Empty, "h1", 1, 1, At), false },
        { "an event without a user id", null, new StepDenied(Guid.Empty, Guid.Empty, "h1", "x", "y", At), false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_sender_has_recorded_only_what_it_may(string what, string? user, object e, bool recorded)
    {
        var refusal = AuditSenders.Refusal(user, e);
        Assert.True(recorded == refusal is null, $"{what}: {refusal ?? "recorded"}");
    }
}
