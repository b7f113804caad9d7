using SEmigrate.Contracts.Audit;
using SEmigrate.Workers.Processes;

namespace SEmigrate.Workers.Audit;

/// <summary>Who may have the auditor record what, by the broker user that sent it: every sender sets the
/// message's user id, which RabbitMQ checks against the connection's user. A host's own user speaks only
/// for that host (events it raises itself, naming it); another user is the control plane's. A message
/// without a user id could be anyone's, so it is not recorded.</summary>
public static class AuditSenders
{
    /// <summary>Why <paramref name="user"/> may not have <paramref name="e"/> recorded; null when it may.</summary>
    public static string? Refusal(string? user, object e)
    {
        if (string.IsNullOrEmpty(user))
        {
            return $"a {e.GetType().Name} without a broker user id (who sent it cannot be told)";
        }
        if (!user.StartsWith(HostBrokerUsers.UserPrefix, StringComparison.Ordinal))
        {
            return null; // the control plane's
        }
        var host = user[HostBrokerUsers.UserPrefix.Length..];
        return e is not IHostEvent raised ? $"host {host}'s broker user sent a {e.GetType().Name}, which only the control plane records"
            : raised.RaisedBy != host ? $"host {host}'s broker user sent a {e.GetType().Name} raised by {raised.RaisedBy}"
            : null;
    }
}
